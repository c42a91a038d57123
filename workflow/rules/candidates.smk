# Stage `candidates`: vessels (multi-scale Frangi filter) and candidate lesion
# voxels per lobe (above the lobe's Otsu threshold, minus vessels), and p* per
# lobe (dramseg.candidates).


rule find_candidates:
    conda:
        "../../envs/preprocess.yaml"
    input:
        ct="results/resample/{scan}/ct.nii.gz",
        lobes="results/resample/{scan}/lobes.nii.gz",
    output:
        candidates="results/candidates/{scan}/candidates.nii.gz",
        vessels="results/candidates/{scan}/vessels.nii.gz",
        table="results/candidates/{scan}/lobes.csv",
    params:
        settings=lambda w: settings_json("candidates"),
    log:
        "logs/candidates/{scan}.log",
    benchmark:
        "benchmarks/out/candidates/{scan}.tsv"
    threads: config["threads"]["preprocess"]
    shell:
        "python -m dramseg.candidates --ct {input.ct} --lobes {input.lobes} "
        "--out-candidates {output.candidates} --out-vessels {output.vessels} "
        "--out-table {output.table} --scan-id {wildcards.scan} --threads {threads} "
        "--settings {params.settings} > {log} 2>&1"
