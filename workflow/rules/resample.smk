# Stage `resample`: crop CT and lobe map to the lungs and resample both to
# isotropic voxels (dramseg.resample).


rule resample_scan:
    conda:
        "../../envs/preprocess.yaml"
    input:
        record=lambda w: record_path(w.scan),
        ct=lambda w: SCANS[w.scan]["ct"],
        lobes="results/lobes/{scan}/lobes.nii.gz",
    output:
        ct="results/resample/{scan}/ct.nii.gz",
        lobes="results/resample/{scan}/lobes.nii.gz",
        box="results/resample/{scan}/box.json",
    params:
        settings=lambda w: settings_json("resample"),
    log:
        "logs/resample/{scan}.log",
    benchmark:
        "benchmarks/out/resample/{scan}.tsv"
    threads: config["threads"]["preprocess"]
    shell:
        "python -m dramseg.resample --record {input.record} --lobes {input.lobes} "
        "--out-ct {output.ct} --out-lobes {output.lobes} --out-box {output.box} "
        "--settings {params.settings} > {log} 2>&1"
