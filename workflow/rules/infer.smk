# Tiled scan-level inference, candidate post-processing ("-p" methods) and,
# in apply mode, the severity table of a new cohort.


def model_path(wildcards):
    if APPLY_MODE:
        return config["apply"]["checkpoint"]
    return f"results/train/{wildcards.method}/model.pt"


def inference_resources():
    return 1 if config["device"] in ("cuda", "auto") else 0


INFERENCE_OUTPUTS = {
    "probability": "results/infer/{method}/{scan}/probability.nii.gz",
    "lesion": "results/infer/{method}/{scan}/lesion.nii.gz",
    "table": "results/infer/{method}/{scan}/lobes.csv",
    "severity": "results/infer/{method}/{scan}/severity.json",
}


rule infer_scan:
    conda:
        "../../envs/torch.yaml"
    input:
        model=model_path,
        record="results/scans/{scan}/record.json",
        lobes="results/lobes/{scan}/lobes.nii.gz",
        store="results/chunks/{scan}/chunks.h5",
        box="results/resample/{scan}/box.json",
        resampled_lobes="results/resample/{scan}/lobes.nii.gz",
    output:
        **INFERENCE_OUTPUTS,
    params:
        settings=lambda wildcards: settings_json("device", "allow_cpu_fallback", "inference", "chunks", "resample", "model"),
    threads: config["threads"]["infer"]
    resources:
        gpu=inference_resources(),
        mem_mb=6000,
    log:
        "logs/infer/{method}/{scan}.log",
    benchmark:
        "benchmarks/out/infer/{method}/{scan}.tsv"
    shell:
        "python -m dramseg.infer scan --method {wildcards.method} --model {input.model} --record {input.record}"
        " --lobes {input.lobes} --store {input.store} --box {input.box} --resampled-lobes {input.resampled_lobes}"
        " --out-probability {output.probability} --out-lesion {output.lesion} --out-table {output.table}"
        " --out-severity {output.severity} --threads {threads} --settings {params.settings} > {log} 2>&1"


rule postprocess_scan:
    conda:
        "../../envs/torch.yaml"
    input:
        record="results/scans/{scan}/record.json",
        lobes="results/lobes/{scan}/lobes.nii.gz",
        lesion="results/infer/{method}/{scan}/lesion.nii.gz",
        probability="results/infer/{method}/{scan}/probability.nii.gz",
        candidates="results/candidates/{scan}/candidates.nii.gz",
    output:
        probability="results/infer/{method}-p/{scan}/probability.nii.gz",
        lesion="results/infer/{method}-p/{scan}/lesion.nii.gz",
        table="results/infer/{method}-p/{scan}/lobes.csv",
        severity="results/infer/{method}-p/{scan}/severity.json",
    params:
        settings=lambda wildcards: settings_json("chunks"),
    log:
        "logs/infer/{method}-p/{scan}.log",
    benchmark:
        "benchmarks/out/infer/{method}-p/{scan}.tsv"
    shell:
        "python -m dramseg.infer postprocess --method {wildcards.method}-p --record {input.record}"
        " --lobes {input.lobes} --lesion {input.lesion} --probability {input.probability}"
        " --candidates {input.candidates} --out-probability {output.probability} --out-lesion {output.lesion}"
        " --out-table {output.table} --out-severity {output.severity} --settings {params.settings} > {log} 2>&1"


rule tabulate_severity:
    conda:
        "../../envs/torch.yaml"
    input:
        lambda wildcards: expand(
            "results/infer/{method}/{scan}/severity.json", method=config["apply"]["method"], scan=list(SCANS)
        ),
    output:
        "results/tables/severity.csv",
    log:
        "logs/infer/severity_table.log",
    shell:
        "python -m dramseg.infer severity-table --reports {input} --out {output} > {log} 2>&1"
