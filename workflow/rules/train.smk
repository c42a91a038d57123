# One training job per method; each trains on the train split and selects on val.


def training_settings(wildcards):
    """Settings of one method's training; other methods' entries are left out so
    that changing one method retrains only that method."""
    settings = {
        section: config[section]
        for section in ("device", "allow_cpu_fallback", "seed", "model", "training", "chunks", "resample")
    }
    settings["method"] = config["methods"][wildcards.method]
    settings["methods"] = {wildcards.method: settings["method"]}
    return shlex.quote(json.dumps(settings, sort_keys=True))


def training_resources():
    return 1 if config["device"] in ("cuda", "auto") else 0


rule train_method:
    conda:
        "../../envs/torch.yaml"
    input:
        # Only train and val chunks: adding a test scan retrains nothing.
        index="results/chunks/index_train.csv",
        stores=lambda wildcards: expand("results/chunks/{scan}/chunks.h5", scan=scans_in_split("train", "val")),
    output:
        model="results/train/{method}/model.pt",
        history="results/train/{method}/history.csv",
    params:
        settings=training_settings,
        checkpoints="results/train/{method}/checkpoints",
    threads: config["threads"]["train"]
    resources:
        gpu=training_resources(),
        mem_mb=8000,
        runtime=24 * 60,
    log:
        "logs/train/{method}.log",
    benchmark:
        "benchmarks/out/train/{method}.tsv"
    shell:
        "python -m dramseg.train --method {wildcards.method} --index {input.index}"
        " --out-model {output.model} --out-history {output.history} --checkpoint-dir {params.checkpoints}"
        " --threads {threads} --settings {params.settings} > {log} 2>&1"


rule count_complexity:
    conda:
        "../../envs/torch.yaml"
    output:
        "results/complexity/{method}.json",
    params:
        settings=training_settings,
    log:
        "logs/complexity/{method}.log",
    benchmark:
        "benchmarks/out/complexity/{method}.tsv"
    shell:
        "python -m dramseg.complexity --method {wildcards.method} --out-json {output} --settings {params.settings} > {log} 2>&1"
