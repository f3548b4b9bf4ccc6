# capmodel: data -> gradient checks -> train per model -> sample -> evaluate -> summarize -> reports.
# Run: snakemake --cores 2   (config in config/config.yaml; see README.md)
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/gradcheck.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/sample.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/summarize.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        get_final_outputs(),


onsuccess:
    print(wc.report_paths(get_final_outputs()))
