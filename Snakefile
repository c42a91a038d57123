# Weakly supervised COVID-19 lesion segmentation with dense regression
# activation maps (Xie et al.), from CT scans and lobe scores to lesion
# masks, tables and figures. Stages and their files: docs/pipeline.md.

import os

from snakemake.utils import min_version

min_version("9.0")


# The defaults; --configfile files given on the command line override them key by key.
configfile: os.path.join(workflow.basedir, "config.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/scans.smk"
include: "workflow/rules/lobes.smk"
include: "workflow/rules/resample.smk"
include: "workflow/rules/candidates.smk"
include: "workflow/rules/chunks.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/infer.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        final_targets(),


rule ablation:
    input:
        "results/tables/ablation.csv",


rule comparison:
    input:
        "results/tables/comparison.csv",


rule preprocess:
    input:
        "results/chunks/index.csv",
