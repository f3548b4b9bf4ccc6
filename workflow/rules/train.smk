# Stage 3: one training job per model. Its settings reach `capmodel train` as a JSON file
# that the workflow writes (rule model_settings, `capmodel settings`). Resume state lives in
# results/resume/<model>, outside the declared outputs, so Snakemake's cleanup of a failed
# job keeps it and the rerun continues from the last checkpoint; after a change of the
# model's settings (or its data or start) the rerun starts over (--restart-on-change).


rule model_settings:
    output:
        "results/models/{model}/settings.json",
    log:
        "logs/settings/{model}.log",
    localrule: True
    params:
        settings=lambda wildcards: json.dumps(MODELS[wildcards.model]),
    shell:
        "capmodel settings {params.settings:q} --out {output:q} > {log:q} 2>&1"


rule train_model:
    input:
        data=DATA_DIR,
        gradcheck="results/gradcheck.csv",
        settings="results/models/{model}/settings.json",
    output:
        model="results/models/{model}/model.npz",
        meta="results/models/{model}/model.json",
        history="results/models/{model}/history.csv",
        val="results/models/{model}/val.csv",
    log:
        "logs/train/{model}.log",
    benchmark:
        "results/benchmarks/train_{model}.tsv"
    wildcard_constraints:
        model=TRAINED_PATTERN,
    threads: config["resources"]["train_threads"]
    resources:
        **RESOURCES["train"],
    params:
        out_dir=lambda wildcards, output: Path(output.model).parent,
        resume="results/resume/{model}",
        init_from=[],
    shell:
        "capmodel train --data {input.data:q} --settings {input.settings:q} --out-dir {params.out_dir:q}"
        " {params.init_from:q} --checkpoint-dir {params.resume:q} --restart-on-change > {log:q} 2>&1"
