# atlasmap: map single-cell RNA-seq queries onto a reference atlas with scANVI.
from snakemake.utils import min_version

min_version("9.0")


# The demo config is the default; a --configfile replaces it rather than being
# merged into it (a merge would keep the demo's query beside the user's).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/query.smk"
include: "workflow/rules/reference.smk"
include: "workflow/rules/mapping.smk"
include: "workflow/rules/plots.smk"


rule all:
    default_target: True
    input:
        all_outputs,
