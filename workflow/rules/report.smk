# Stage 7: papermill-executed report notebooks rendered to self-contained HTML in reports/.
# The notebooks read result files, each an input of its rule and handed over as a parameter,
# and the pictures, which are not inputs: the samples files name them relative to the data
# set their records name (docs/workflow.md);
# figures are also wrapped in report(...) for `snakemake --report report.html`.
from snakemake import __version__ as SNAKEMAKE_VERSION

# The seed of the summary's random sample of images: the same images in every run.
REPORT_SEED = 0


# The workflow source's commit for the summary report, read by this job and never while the
# Snakefile is parsed. temp(): deleted once the report is made, so each new summary report
# records the source it was made with, and an up-to-date report does not rerun for it.
rule source_revision:
    output:
        temp("results/source_revision.json"),
    log:
        "logs/report/source_revision.log",
    localrule: True
    params:
        source=workflow.basedir,
    shell:
        "capmodel source-revision {params.source:q} --out {output:q} > {log:q} 2>&1"


rule report_model:
    input:
        notebook=str(NOTEBOOKS / "model_report.ipynb"),
        meta="results/models/{model}/model.json",
        # The weights and the data set's features and regions: an attention model's report
        # reads a few captions back through the model to draw its attention maps.
        weights="results/models/{model}/model.npz",
        data=DATA_DIR,
        history="results/models/{model}/history.csv",
        val="results/models/{model}/val.csv",
        samples=f"results/models/{{model}}/samples_{SPLIT}.csv",
        record=f"results/models/{{model}}/samples_{SPLIT}.json",
        scores=f"results/models/{{model}}/scores_{SPLIT}.csv",
        metrics="results/models/{model}/metrics.json",
    output:
        html="reports/{model}.html",
        notebook="results/notebooks/{model}.ipynb",
        training=report(
            "results/models/{model}/figures/training.png",
            caption="../report/training.rst",
            category="Models",
            subcategory="{model}",
        ),
        examples=report(
            "results/models/{model}/figures/examples.png",
            caption="../report/examples.rst",
            category="Models",
            subcategory="{model}",
        ),
    log:
        "logs/report/{model}.log",
    resources:
        **RESOURCES["small"],
    params:
        figures_dir=lambda wildcards, output: Path(output.training).parent,
        num_examples=config["report"]["num_examples"],
    shell:
        "papermill {input.notebook:q} {output.notebook:q} -k python3 --log-output --cwd ."
        " -p model_name {wildcards.model:q} -p model_json {input.meta:q} -p metrics_json {input.metrics:q}"
        " -p history_csv {input.history:q} -p val_csv {input.val:q} -p samples_csv {input.samples:q}"
        " -p samples_json {input.record:q} -p scores_csv {input.scores:q} -p data_dir {input.data:q}"
        " -p summary_link summary.html"
        " -p figures_dir {params.figures_dir:q} -p num_examples {params.num_examples:q} > {log:q} 2>&1"
        " && jupyter nbconvert --to html --no-input {output.notebook:q} --output-dir reports"
        " --output {wildcards.model:q} >> {log:q} 2>&1"


rule report_summary:
    input:
        notebook=str(NOTEBOOKS / "summary_report.ipynb"),
        csv="results/summary.csv",
        models=expand("results/models/{model}/model.json", model=sorted(MODELS)),
        val=expand("results/models/{model}/val.csv", model=sorted(MODELS)),
        samples=expand("results/{kind}/samples_{split}.csv", kind=SAMPLED, split=SPLIT),
        records=expand("results/{kind}/samples_{split}.json", kind=SAMPLED, split=SPLIT),
        scores=expand("results/{kind}/scores_{split}.csv", kind=SAMPLED, split=SPLIT),
        data=DATA_DIR,
        revision="results/source_revision.json",
        # The model reports it links to, so that every link resolves.
        reports=expand("reports/{model}.html", model=sorted(MODELS)),
    output:
        html="reports/summary.html",
        notebook="results/notebooks/summary.ipynb",
        metrics=report(
            "results/figures/metrics.png",
            caption="../report/metrics.rst",
            category="Summary",
        ),
        val_loss=report(
            "results/figures/val_loss.png",
            caption="../report/val_loss.rst",
            category="Summary",
        ),
    log:
        "logs/report/summary.log",
    resources:
        **RESOURCES["small"],
    params:
        # Every file the notebook reads, by model name (YAML, as JSON), from the inputs.
        files=lambda wildcards, input: json.dumps(
            {
                "model_json": {Path(p).parent.name: p for p in input.models},
                "val_files": {Path(p).parent.name: p for p in input.val},
                "samples_files": {Path(p).parent.name: p for p in input.samples},
                "scores_files": {Path(p).parent.name: p for p in input.scores},
                "records": {Path(p).parent.name: p for p in input.records},
                "report_links": {Path(p).stem: Path(p).name for p in input.reports},
            }
        ),
        figures_dir=lambda wildcards, output: Path(output.metrics).parent,
        snakemake_version=SNAKEMAKE_VERSION,
        num_examples=config["report"]["num_examples"],
        seed=REPORT_SEED,
    shell:
        "papermill {input.notebook:q} {output.notebook:q} -k python3 --log-output --cwd ."
        " -p summary_csv {input.csv:q} -y {params.files:q} -p data_dir {input.data:q}"
        " -f {input.revision:q} -r snakemake_version {params.snakemake_version:q}"
        " -p figures_dir {params.figures_dir:q} -p num_examples {params.num_examples:q} -p seed {params.seed:q}"
        " > {log:q} 2>&1"
        " && jupyter nbconvert --to html --no-input {output.notebook:q} --output-dir reports"
        " --output summary >> {log:q} 2>&1"
