# Cohort table (Table I of Xie et al.), figures and the entries of the
# Snakemake HTML report (`snakemake --report results/report.html`).
# Captions are in workflow/report/; drawing code in workflow/dramseg/figures/.

REPORT = config["report"]


def _probability_methods():
    """Evaluated methods that have probability maps (the pipeline's own, not external predictions)."""
    return [method for method in evaluated_methods("comparison") if base_method(method) in config["methods"]]


def _check_report_settings():
    if APPLY_MODE or not REPORT["enabled"]:
        return
    method = REPORT["attention_method"]
    spec = config["methods"].get(method)
    if spec is None or spec["kind"] != "regression" or not spec["attention"]:
        raise ValueError(
            f"report.attention_method is {method!r}, which is not a regression method with attention: true in `methods`; "
            "name such a method or set report.enabled: false"
        )
    for name in REPORT["confusion_methods"]:
        if base_method(name) not in config["methods"] and name not in config["evaluation"]["external"]:
            raise ValueError(
                f"report.confusion_methods names {name!r}, which is neither a method in `methods` (optionally with -p) "
                "nor in evaluation.external; fix report.confusion_methods"
            )


_check_report_settings()


def _attention_scans():
    """The first report.attention_scans test scans, those with a reference mask first."""
    test_scans = scans_in_split("test")
    ordered = [scan for scan in test_scans if SCANS[scan]["reference"]] + [
        scan for scan in test_scans if not SCANS[scan]["reference"]
    ]
    return ordered[: REPORT["attention_scans"]]


def _test_results(methods):
    return expand("results/evaluate/{method}/{scan}.json", method=methods, scan=scans_in_split("test"))


def _test_records():
    return [record_path(scan) for scan in scans_in_split("test")]


def _test_references():
    return [SCANS[scan]["reference"] for scan in scans_in_split("test") if SCANS[scan]["reference"]]


def _coronal_inputs(wildcards):
    record = SCANS[wildcards.scan]
    inputs = {
        "record": record_path(wildcards.scan),
        "lobes": f"results/lobes/{wildcards.scan}/lobes.nii.gz",
        "ct": record["ct"],
        "probabilities": [
            f"results/infer/{method}/{wildcards.scan}/probability.nii.gz" for method in _probability_methods()
        ],
    }
    if record["reference"]:
        inputs["reference"] = record["reference"]
    return inputs


def _coronal_pairs(wildcards):
    return " ".join(
        f"{method}=results/infer/{method}/{wildcards.scan}/probability.nii.gz" for method in _probability_methods()
    )


def report_targets():
    """Every table and figure of the report stage in the default target (the cohort table always)."""
    targets = ["results/tables/cohort.csv", "results/figures/cohort.png"]
    if APPLY_MODE or not REPORT["enabled"]:
        return targets
    targets += expand("results/figures/coronal/{scan}.png", scan=scans_in_split("test"))
    targets += expand("results/figures/confusion_{method}.png", method=REPORT["confusion_methods"])
    targets += [
        "results/figures/attention.png",
        "results/figures/dsc.png",
        "results/figures/dsc_subtypes.png",
        "results/figures/training.png",
    ]
    return targets


rule tabulate_cohort:
    conda:
        "../../envs/report.yaml"
    input:
        records=lambda wildcards: [record_path(scan) for scan in SCANS],
    output:
        table=report("results/tables/cohort.csv", caption="../report/cohort_table.rst", category="1. Cohort"),
        figure=report("results/figures/cohort.png", caption="../report/cohort.rst", category="1. Cohort"),
    params:
        settings=lambda wildcards: settings_json("report", "chunks"),
    threads: config["threads"]["preprocess"]
    log:
        "logs/report/tabulate_cohort.log",
    benchmark:
        "benchmarks/out/report/tabulate_cohort.tsv"
    shell:
        "python -m dramseg.report cohort --records {input.records} --out-table {output.table}"
        " --out-figure {output.figure} --settings {params.settings} > {log} 2>&1"


rule plot_coronal:
    conda:
        "../../envs/report.yaml"
    input:
        unpack(_coronal_inputs),
    output:
        report(
            "results/figures/coronal/{scan}.png",
            caption="../report/coronal.rst",
            category="2. Segmentations",
            subcategory="Coronal views",
            labels={"scan": "{scan}"},
        ),
    params:
        probabilities=_coronal_pairs,
        settings=lambda wildcards: settings_json("report", "resample"),
    threads: config["threads"]["preprocess"]
    resources:
        mem_mb=4000,
    log:
        "logs/report/coronal/{scan}.log",
    benchmark:
        "benchmarks/out/report/coronal/{scan}.tsv"
    shell:
        "python -m dramseg.report coronal --record {input.record} --lobes {input.lobes}"
        " --probability {params.probabilities} --out {output} --settings {params.settings} > {log} 2>&1"


rule plot_attention:
    conda:
        "../../envs/report.yaml"
    input:
        model=f"results/train/{REPORT['attention_method']}/model.pt",
        stores=lambda wildcards: expand("results/chunks/{scan}/chunks.h5", scan=_attention_scans()),
        records=lambda wildcards: [record_path(scan) for scan in _attention_scans()],
    output:
        report("results/figures/attention.png", caption="../report/attention.rst", category="2. Segmentations",
               subcategory="Attention module"),
    params:
        stores=lambda wildcards: " ".join(f"{scan}=results/chunks/{scan}/chunks.h5" for scan in _attention_scans()),
        settings=lambda wildcards: settings_json("report", "chunks", "resample", "model"),
    threads: config["threads"]["preprocess"]
    log:
        "logs/report/attention.log",
    benchmark:
        "benchmarks/out/report/attention.tsv"
    shell:
        "python -m dramseg.report attention --model {input.model} --store {params.stores} --records {input.records}"
        " --out {output} --settings {params.settings} > {log} 2>&1"


rule plot_dsc:
    conda:
        "../../envs/report.yaml"
    input:
        results=lambda wildcards: _test_results(evaluated_methods("comparison")),
        records=lambda wildcards: _test_records(),
    output:
        report("results/figures/dsc.png", caption="../report/dsc.rst", category="3. Metrics"),
    params:
        methods=" ".join(evaluated_methods("comparison")),
        settings=lambda wildcards: settings_json("report"),
    threads: config["threads"]["preprocess"]
    log:
        "logs/report/dsc.log",
    benchmark:
        "benchmarks/out/report/dsc.tsv"
    shell:
        "python -m dramseg.report dsc --results {input.results} --methods {params.methods} --records {input.records}"
        " --out {output} --settings {params.settings} > {log} 2>&1"


rule plot_dsc_subtypes:
    conda:
        "../../envs/report.yaml"
    input:
        results=lambda wildcards: _test_results(evaluated_methods("comparison")),
        records=lambda wildcards: _test_records(),
        references=lambda wildcards: _test_references(),
    output:
        report("results/figures/dsc_subtypes.png", caption="../report/dsc_subtypes.rst", category="3. Metrics"),
    params:
        methods=" ".join(evaluated_methods("comparison")),
        settings=lambda wildcards: settings_json("report"),
    threads: config["threads"]["preprocess"]
    log:
        "logs/report/dsc_subtypes.log",
    benchmark:
        "benchmarks/out/report/dsc_subtypes.tsv"
    shell:
        "python -m dramseg.report subtypes --results {input.results} --methods {params.methods}"
        " --records {input.records} --out {output} --settings {params.settings} > {log} 2>&1"


rule plot_confusion:
    conda:
        "../../envs/report.yaml"
    input:
        results=lambda wildcards: _test_results([wildcards.method]),
        records=lambda wildcards: _test_records(),
    output:
        report(
            "results/figures/confusion_{method}.png",
            caption="../report/confusion.rst",
            category="4. Lobe severity scores",
            labels={"method": "{method}"},
        ),
    wildcard_constraints:
        method=r"[A-Za-z0-9_]+(-p)?",
    params:
        settings=lambda wildcards: settings_json("report", "chunks"),
    threads: config["threads"]["preprocess"]
    log:
        "logs/report/confusion_{method}.log",
    benchmark:
        "benchmarks/out/report/confusion_{method}.tsv"
    shell:
        "python -m dramseg.report confusion --results {input.results} --method {wildcards.method}"
        " --records {input.records} --out {output} --settings {params.settings} > {log} 2>&1"


rule plot_training:
    conda:
        "../../envs/report.yaml"
    input:
        histories=lambda wildcards: expand("results/train/{method}/history.csv", method=TRAINED_METHODS),
        records=lambda wildcards: [record_path(scan) for scan in SCANS],
    output:
        report("results/figures/training.png", caption="../report/training.rst", category="5. Training"),
    params:
        histories=lambda wildcards: " ".join(f"{method}=results/train/{method}/history.csv" for method in TRAINED_METHODS),
        settings=lambda wildcards: settings_json("report"),
    threads: config["threads"]["preprocess"]
    log:
        "logs/report/training.log",
    benchmark:
        "benchmarks/out/report/training.tsv"
    shell:
        "python -m dramseg.report training --history {params.histories} --records {input.records}"
        " --out {output} --settings {params.settings} > {log} 2>&1"
