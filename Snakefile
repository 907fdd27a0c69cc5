# Unit ablation study: how much each CNN unit matters, overall and per class, and why.
# Stages live in workflow/rules/; the library in workflow/unitablation/; docs/development.md explains both.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/download.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/activations.smk"
include: "workflow/rules/ablation.smk"
include: "workflow/rules/attributes.smk"
include: "workflow/rules/concepts.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/browser.smk"


rule all:
    default_target: True
    input:
        all_outputs(),
