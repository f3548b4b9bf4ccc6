# Stage 4: captions for the evaluation split (decoder from config 'sample:', handed over as
# a JSON file), and the most-frequent-training-caption baseline in the same format. Each
# CSV gets a record of how it was made beside it (.json), which evaluation reads.


rule sample_settings:
    output:
        "results/sample_settings.json",
    log:
        "logs/settings/sample.log",
    localrule: True
    params:
        settings=json.dumps(SAMPLE),
    shell:
        "capmodel settings {params.settings:q} --out {output:q} > {log:q} 2>&1"


rule sample_captions:
    input:
        model="results/models/{model}/model.npz",
        meta="results/models/{model}/model.json",
        data=DATA_DIR,
        settings="results/sample_settings.json",
    output:
        csv=f"results/models/{{model}}/samples_{SPLIT}.csv",
        record=f"results/models/{{model}}/samples_{SPLIT}.json",
    log:
        "logs/sample/{model}.log",
    resources:
        **RESOURCES["small"],
    shell:
        "capmodel sample --model {input.model:q} --data {input.data:q} --settings {input.settings:q}"
        " --out {output.csv:q} > {log:q} 2>&1"


rule baseline_captions:
    input:
        data=DATA_DIR,
    output:
        csv=f"results/baseline/samples_{SPLIT}.csv",
        record=f"results/baseline/samples_{SPLIT}.json",
    log:
        "logs/sample/baseline.log",
    resources:
        **RESOURCES["small"],
    params:
        split=SPLIT,
    shell:
        "capmodel baseline --data {input.data:q} --out {output.csv:q} --split {params.split:q} > {log:q} 2>&1"
