# Stage 4: captions for the evaluation split (decoder from config 'sample:'), and the
# most-frequent-training-caption baseline in the same format.


rule sample_captions:
    input:
        model="results/models/{model}/model.npz",
        meta="results/models/{model}/model.json",
        data=get_data_dir(),
    output:
        f"results/models/{{model}}/samples_{SPLIT}.csv",
    log:
        "logs/sample/{model}.log",
    conda:
        ENV
    resources:
        mem_mb=config["resources"]["small_mem_mb"],
        runtime=config["resources"]["small_runtime"],
    params:
        model=lambda wildcards, input: input.model[: -len(".npz")],
        args=get_sample_args(),
    shell:
        "capmodel sample --model {params.model} --data {input.data} --out {output} {params.args} > {log} 2>&1"


rule baseline_captions:
    input:
        data=get_data_dir(),
    output:
        f"results/baseline/samples_{SPLIT}.csv",
    log:
        "logs/sample/baseline.log",
    conda:
        ENV
    resources:
        mem_mb=config["resources"]["small_mem_mb"],
        runtime=config["resources"]["small_runtime"],
    params:
        split=SPLIT,
    shell:
        "capmodel baseline --data {input.data} --out {output} --split {params.split} > {log} 2>&1"
