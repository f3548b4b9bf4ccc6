# Stage 5: BLEU-1..4, METEOR, ROUGE-L and CIDEr-D per model (and for the baseline). The
# decoding settings come from the record that sampling wrote beside the CSV.


rule evaluate_captions:
    input:
        csv=f"results/{{kind}}/samples_{SPLIT}.csv",
        record=f"results/{{kind}}/samples_{SPLIT}.json",
    output:
        metrics="results/{kind}/metrics.json",
        scores=f"results/{{kind}}/scores_{SPLIT}.csv",
    log:
        "logs/evaluate/{kind}.log",
    wildcard_constraints:
        kind=f"baseline|models/(?:{MODEL_PATTERN})",
    resources:
        **RESOURCES["small"],
    params:
        name=lambda wildcards: Path(wildcards.kind).name,
        java=[] if config["evaluate"]["java"] else ["--no-java"],
    shell:
        "capmodel evaluate --samples {input.csv:q} --out {output.metrics:q} --scores {output.scores:q}"
        " --name {params.name:q} {params.java:q} > {log:q} 2>&1"
