# Stage 6: one table over all models and the baseline, from every file it reads.


rule summarize:
    input:
        metrics=expand("results/{kind}/metrics.json", kind=SAMPLED),
        models=expand("results/models/{model}/model.json", model=sorted(MODELS)),
        val=expand("results/models/{model}/val.csv", model=sorted(MODELS)),
    output:
        csv=report(
            "results/summary.csv",
            caption="../report/summary.rst",
            category="Summary",
        ),
        md="results/summary.md",
    log:
        "logs/summarize.log",
    resources:
        **RESOURCES["small"],
    shell:
        "capmodel summarize --metrics {input.metrics:q} --models {input.models:q} --val {input.val:q}"
        " --out {output.csv:q} --markdown {output.md:q} > {log:q} 2>&1"
