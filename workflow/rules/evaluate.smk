# Stage 5: BLEU-1..4, METEOR, ROUGE-L and CIDEr-D per model (and for the baseline).


rule evaluate_captions:
    input:
        f"results/{{kind}}/samples_{SPLIT}.csv",
    output:
        "results/{kind}/metrics.json",
    log:
        "logs/evaluate/{kind}.log",
    wildcard_constraints:
        kind="baseline|models/[^/]+",
    conda:
        ENV
    resources:
        mem_mb=config["resources"]["small_mem_mb"],
        runtime=config["resources"]["small_runtime"],
    params:
        settings=lambda wildcards: json.dumps(get_sample_settings(wildcards.kind)),
        name=lambda wildcards: Path(wildcards.kind).name,
        java="" if config["evaluate"]["java"] else "--no-java",
    shell:
        "capmodel evaluate --samples {input} --out {output} --name {params.name}"
        " --settings '{params.settings}' {params.java} > {log} 2>&1"
