# Stage 2: numeric gradient checks of every layer and of every model family's loss.
# The job fails, naming the layer, when an error exceeds its tolerance.


rule gradcheck:
    output:
        report(
            "results/gradcheck.csv",
            caption="../report/gradcheck.rst",
            category="Gradient checks",
        ),
    log:
        "logs/gradcheck.log",
    resources:
        **RESOURCES["small"],
    params:
        seed=config["gradcheck"]["seed"],
    shell:
        "capmodel gradcheck --out {output:q} --seed {params.seed:q} > {log:q} 2>&1"
