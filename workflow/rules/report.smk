# Stage 7: papermill-executed report notebooks rendered to self-contained HTML in reports/.
# The notebooks only read result files; figures are also wrapped in report(...) for
# `snakemake --report report.html`.


rule report_model:
    input:
        notebook=str(NOTEBOOKS / "model_report.ipynb"),
        meta="results/models/{model}/model.json",
        history="results/models/{model}/history.csv",
        val="results/models/{model}/val.csv",
        samples=f"results/models/{{model}}/samples_{SPLIT}.csv",
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
    conda:
        ENV
    resources:
        mem_mb=config["resources"]["small_mem_mb"],
        runtime=config["resources"]["small_runtime"],
    params:
        model_dir=lambda wildcards, input: Path(input.meta).parent.resolve(),
        figures_dir=lambda wildcards, output: Path(output.training).parent.resolve(),
        split=SPLIT,
        num_examples=config["report"]["num_examples"],
    shell:
        "papermill {input.notebook} {output.notebook} -k python3 --log-output"
        " -p model_name {wildcards.model} -p model_dir {params.model_dir} -p split {params.split}"
        " -p figures_dir {params.figures_dir} -p num_examples {params.num_examples} > {log} 2>&1"
        " && jupyter nbconvert --to html --no-input {output.notebook} --output-dir reports"
        " --output {wildcards.model} >> {log} 2>&1"


rule report_summary:
    input:
        notebook=str(NOTEBOOKS / "summary_report.ipynb"),
        csv="results/summary.csv",
        vals=expand("results/models/{model}/val.csv", model=sorted(MODELS)),
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
    conda:
        ENV
    resources:
        mem_mb=config["resources"]["small_mem_mb"],
        runtime=config["resources"]["small_runtime"],
    params:
        csv=lambda wildcards, input: Path(input.csv).resolve(),
        models_dir=Path("results/models").resolve(),
        figures_dir=lambda wildcards, output: Path(output.metrics).parent.resolve(),
    shell:
        "papermill {input.notebook} {output.notebook} -k python3 --log-output"
        " -p summary_csv {params.csv} -p models_dir {params.models_dir} -p figures_dir {params.figures_dir}"
        " > {log} 2>&1"
        " && jupyter nbconvert --to html --no-input {output.notebook} --output-dir reports"
        " --output summary >> {log} 2>&1"
