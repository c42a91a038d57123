# Per-scan metrics of every evaluated method on the test scans, and the
# comparison (Table II) and ablation (Table III) tables. Metric definitions:
# docs/metrics.md.

EXTERNAL_PREDICTIONS = config["evaluation"]["external"]
for _name in EXTERNAL_PREDICTIONS:
    if _name in config["methods"]:
        raise ValueError(
            f"evaluation.external names {_name!r}, which is also a trained method in `methods`; rename the external predictions"
        )


def _evaluation_inputs(wildcards):
    """Prediction, lobe table (pipeline methods only), lobe map, record and reference mask of one scan."""
    scan = wildcards.scan
    inputs = {
        "record": record_path(scan),
        "lobes": f"results/lobes/{scan}/lobes.nii.gz",
    }
    if wildcards.method in EXTERNAL_PREDICTIONS:
        external = EXTERNAL_PREDICTIONS[wildcards.method]
        inputs["prediction"] = os.path.join(external["dir"], external["pattern"].format(scan_id=scan))
    else:
        inputs["prediction"] = f"results/infer/{wildcards.method}/{scan}/lesion.nii.gz"
        inputs["lobe_table"] = f"results/infer/{wildcards.method}/{scan}/lobes.csv"
    if SCANS[scan]["reference"]:
        inputs["reference"] = SCANS[scan]["reference"]
    return inputs


def _lobe_table_option(wildcards, input):
    # External predictions have no lobe table; evaluate.py then scores the lobes itself.
    if "lobe_table" in input.keys():
        return f"--lobe-table {shlex.quote(input.lobe_table)}"
    return ""


def _scan_results(methods):
    return expand("results/evaluate/{method}/{scan}.json", method=methods, scan=scans_in_split("test"))


def _complexity_files(methods):
    """Complexity of the networks behind the methods; external predictions have none."""
    networks = dict.fromkeys(base_method(method) for method in methods)
    return [f"results/complexity/{network}.json" for network in networks if network in config["methods"]]


def _evaluation_settings(*keys, **extra):
    """Shell-quoted --settings JSON with only the named evaluation keys, so other changes do not rerun jobs."""
    settings = {"evaluation": {key: config["evaluation"][key] for key in keys}, **extra}
    return shlex.quote(json.dumps(settings, sort_keys=True))


SCAN_SETTINGS = _evaluation_settings(
    "surface_method",
    "reference_subtypes",
    "geometry_tolerance_mm",
    "direction_tolerance",
    chunks={"score_intervals": config["chunks"]["score_intervals"]},
)
TABLE_SETTINGS = _evaluation_settings("bootstrap_samples", "confidence_level", seed=config["seed"])
ABLATION_SETTINGS = _evaluation_settings(
    "bootstrap_samples", "confidence_level", seed=config["seed"], methods=config["methods"]
)


def _comparison_methods():
    return evaluated_methods("comparison") + list(EXTERNAL_PREDICTIONS)


rule evaluate_scan:
    conda:
        "../../envs/preprocess.yaml"
    input:
        unpack(_evaluation_inputs),
    output:
        "results/evaluate/{method}/{scan}.json",
    wildcard_constraints:
        method=r"[A-Za-z0-9_]+(-p)?",
        scan=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    params:
        lobe_table=_lobe_table_option,
        settings=SCAN_SETTINGS,
    threads: config["threads"]["preprocess"]
    log:
        "logs/evaluate/{method}/{scan}.log",
    benchmark:
        "benchmarks/out/evaluate/{method}/{scan}.tsv"
    shell:
        "python -m dramseg.evaluate scan --method {wildcards.method} --scan-id {wildcards.scan}"
        " --prediction {input.prediction:q} {params.lobe_table} --lobes {input.lobes}"
        " --record {input.record} --out {output} --settings {params.settings} > {log} 2>&1"


rule tabulate_comparison:
    conda:
        "../../envs/preprocess.yaml"
    input:
        results=_scan_results(_comparison_methods()),
        complexity=_complexity_files(_comparison_methods()),
    output:
        per_scan="results/tables/per_scan.csv",
        summary="results/tables/comparison.csv",
    params:
        methods=" ".join(_comparison_methods()),
        settings=TABLE_SETTINGS,
    threads: config["threads"]["preprocess"]
    log:
        "logs/evaluate/tabulate_comparison.log",
    benchmark:
        "benchmarks/out/evaluate/tabulate_comparison.tsv"
    shell:
        "python -m dramseg.evaluate table --inputs {input.results} --complexity {input.complexity}"
        " --methods {params.methods} --out-per-scan {output.per_scan} --out-summary {output.summary}"
        " --settings {params.settings} > {log} 2>&1"


rule tabulate_ablation:
    conda:
        "../../envs/preprocess.yaml"
    input:
        results=_scan_results(evaluated_methods("ablation")),
        complexity=_complexity_files(evaluated_methods("ablation")),
    output:
        "results/tables/ablation.csv",
    params:
        methods=" ".join(evaluated_methods("ablation")),
        settings=ABLATION_SETTINGS,
    threads: config["threads"]["preprocess"]
    log:
        "logs/evaluate/tabulate_ablation.log",
    benchmark:
        "benchmarks/out/evaluate/tabulate_ablation.tsv"
    shell:
        "python -m dramseg.evaluate ablation --inputs {input.results} --complexity {input.complexity}"
        " --methods {params.methods} --out {output} --settings {params.settings} > {log} 2>&1"
