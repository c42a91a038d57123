# One record.json per scan: its files, split, scores and lobe convention.


def _record_params(wildcards):
    record = {key: value for key, value in SCANS[wildcards.scan].items() if key != "truth"}
    return shlex.quote(json.dumps(record, sort_keys=True))


def _demo_truth(wildcards):
    truth = SCANS[wildcards.scan].get("truth")
    return [truth] if truth else []


rule register_scan:
    conda:
        "../../envs/preprocess.yaml"
    input:
        truth=_demo_truth,
    output:
        "results/scans/{scan}/record.json",
    params:
        record=_record_params,
        truth=lambda wildcards, input: f"--truth {input.truth}" if input.truth else "",
    log:
        "logs/scans/{scan}.log",
    benchmark:
        "benchmarks/out/scans/{scan}.tsv"
    shell:
        "python -m dramseg.scans --record {params.record} {params.truth} --out {output} > {log} 2>&1"
