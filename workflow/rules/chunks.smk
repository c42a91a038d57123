# Calibrated lesion-fraction intervals, the HDF5 store of lobe chunks per
# scan, and the index of all chunks that training reads.


def chunk_reference_input(wildcards):
    """The scan's reference lesion mask, when it has one; write_chunks resamples it into the store."""
    reference = SCANS[wildcards.scan].get("reference")
    return [reference] if reference else []


rule calibrate_intervals:
    conda:
        "../../envs/preprocess.yaml"
    input:
        record="results/scans/{scan}/record.json",
        table="results/candidates/{scan}/lobes.csv",
    output:
        "results/chunks/{scan}/intervals.csv",
    params:
        settings=lambda wildcards: settings_json("chunks"),
    threads: config["threads"]["preprocess"]
    log:
        "logs/chunks/calibrate/{scan}.log",
    benchmark:
        "benchmarks/out/chunks/calibrate/{scan}.tsv"
    shell:
        "python -m dramseg.chunks calibrate --record {input.record} --candidates-table {input.table}"
        " --out {output} --settings {params.settings} > {log} 2>&1"


rule write_chunks:
    conda:
        "../../envs/preprocess.yaml"
    input:
        record="results/scans/{scan}/record.json",
        ct="results/resample/{scan}/ct.nii.gz",
        lobes="results/resample/{scan}/lobes.nii.gz",
        candidates="results/candidates/{scan}/candidates.nii.gz",
        vessels="results/candidates/{scan}/vessels.nii.gz",
        intervals="results/chunks/{scan}/intervals.csv",
        reference=chunk_reference_input,
    output:
        "results/chunks/{scan}/chunks.h5",
    params:
        settings=lambda wildcards: settings_json("chunks"),
    threads: config["threads"]["preprocess"]
    log:
        "logs/chunks/write/{scan}.log",
    benchmark:
        "benchmarks/out/chunks/write/{scan}.tsv"
    shell:
        "python -m dramseg.chunks write --record {input.record} --ct {input.ct} --lobes {input.lobes}"
        " --candidates {input.candidates} --vessels {input.vessels} --intervals {input.intervals}"
        " --out {output} --settings {params.settings} > {log} 2>&1"


rule index_chunks:
    conda:
        "../../envs/preprocess.yaml"
    input:
        intervals=expand("results/chunks/{scan}/intervals.csv", scan=SCANS),
        stores=expand("results/chunks/{scan}/chunks.h5", scan=SCANS),
    output:
        "results/chunks/index.csv",
    threads: config["threads"]["preprocess"]
    log:
        "logs/chunks/index.log",
    benchmark:
        "benchmarks/out/chunks/index.tsv"
    shell:
        "python -m dramseg.chunks index --intervals {input.intervals} --stores {input.stores}"
        " --out {output} > {log} 2>&1"


rule index_training_chunks:
    conda:
        "../../envs/preprocess.yaml"
    input:
        intervals=lambda wildcards: expand("results/chunks/{scan}/intervals.csv", scan=scans_in_split("train", "val")),
        stores=lambda wildcards: expand("results/chunks/{scan}/chunks.h5", scan=scans_in_split("train", "val")),
    output:
        "results/chunks/index_train.csv",
    threads: config["threads"]["preprocess"]
    log:
        "logs/chunks/index_train.log",
    benchmark:
        "benchmarks/out/chunks/index_train.tsv"
    shell:
        "python -m dramseg.chunks index --intervals {input.intervals} --stores {input.stores}"
        " --out {output} > {log} 2>&1"
