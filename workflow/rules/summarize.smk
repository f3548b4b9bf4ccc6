# Stage 6: one table over all models and the baseline.


rule summarize:
    input:
        expand("results/models/{model}/metrics.json", model=sorted(MODELS)),
        "results/baseline/metrics.json",
    output:
        csv=report(
            "results/summary.csv",
            caption="../report/summary.rst",
            category="Summary",
        ),
        md="results/summary.md",
    log:
        "logs/summarize.log",
    conda:
        ENV
    resources:
        mem_mb=config["resources"]["small_mem_mb"],
        runtime=config["resources"]["small_runtime"],
    shell:
        "capmodel summarize --metrics {input} --out-csv {output.csv} --out-md {output.md} > {log} 2>&1"
