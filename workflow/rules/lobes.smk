# Stage `lobes`: find each scan's lobe map, convert it to the internal labels
# on the CT grid and check it (dramseg.lobes).

from dramseg.lobes import lobe_map_path


def lobe_inputs(wildcards):
    """Return the CT and the lobe map of a scan, so that a changed file reruns the job.

    A lobe map that neither the record nor cohort.lobes_dir locates is left
    out; the job then fails with a message naming both places tried.
    """
    record = SCANS[wildcards.scan]
    inputs = {"ct": record["ct"]}
    path = lobe_map_path(record, config["cohort"])
    if path is not None:
        inputs["lobes"] = str(path)
    return inputs


def lobe_settings(wildcards):
    """Settings of the lobe lookup; the cohort table's path and other scans' DICOM
    series are left out, so moving the table or editing another row reruns nothing."""
    cohort_keys = ("lobes_dir", "lobes_pattern", "default_lobe_convention", "custom_lobe_labels")
    settings = {
        "cohort": {key: config["cohort"][key] for key in cohort_keys},
        "lobes": config["lobes"],
        "resample": config["resample"],
    }
    return shlex.quote(json.dumps(settings, sort_keys=True))


rule lookup_lobes:
    conda:
        "../../envs/preprocess.yaml"
    input:
        unpack(lobe_inputs),
        record=lambda w: record_path(w.scan),
    output:
        lobes="results/lobes/{scan}/lobes.nii.gz",
        qc="results/lobes/{scan}/qc.json",
    params:
        settings=lobe_settings,
    log:
        "logs/lobes/{scan}.log",
    benchmark:
        "benchmarks/out/lobes/{scan}.tsv"
    threads: config["threads"]["preprocess"]
    shell:
        "python -m dramseg.lobes --record {input.record} --out-lobes {output.lobes} "
        "--out-qc {output.qc} --settings {params.settings} > {log} 2>&1"
