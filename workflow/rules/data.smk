# Stage 1: the dataset, in the CS231n on-disk format, under resources/data/.


rule make_shapes_data:
    output:
        directory("resources/data/shapes"),
    log:
        "logs/data/shapes.log",
    resources:
        **RESOURCES["small"],
    params:
        num_train=config["data"]["shapes"]["num_train"],
        num_val=config["data"]["shapes"]["num_val"],
        seed=config["data"]["shapes"]["seed"],
        min_count=config["data"]["shapes"]["min_count"],
        grid=config["data"]["shapes"]["grid"] or "none",
        grid_pca=config["data"]["shapes"]["grid_pca"] or "none",
    shell:
        "capmodel data shapes {output:q} --num-train {params.num_train:q} --num-val {params.num_val:q}"
        " --seed {params.seed:q} --min-count {params.min_count:q}"
        " --grid {params.grid:q} --grid-pca {params.grid_pca:q} > {log:q} 2>&1"


rule fetch_coco_data:
    output:
        directory("resources/data/coco"),
    log:
        "logs/data/coco.log",
    resources:
        **RESOURCES["small"],
    params:
        url=config["data"]["coco"]["url"],
        sha=(
            ["--sha256", config["data"]["coco"]["sha256"]]
            if config["data"]["coco"]["sha256"]
            else []
        ),
    shell:
        "capmodel data fetch {output:q} --url {params.url:q} {params.sha:q} --no-progress > {log:q} 2>&1"


# Source images: the pictures' features, extracted as data.shards independent jobs (a
# cluster spreads them over nodes), then one job builds the data set from them. The
# features files live outside the declared outputs (wc.SHARD_FEATURES; each job declares
# a small record), like training's resume state: a killed extraction job continues where it
# stopped when rerun, a job rerun after an edit of the captions keeps a complete file of
# the same pictures, and a change of the vocabulary or PCA settings rebuilds the data set
# without extracting again.


rule extract_features:
    input:
        captions=config["data"]["captions"] or [],
    output:
        wc.SHARD_RECORD,
    log:
        "logs/data/features-{shard}-of-{shards}.log",
    threads: config["resources"]["train_threads"]
    resources:
        **RESOURCES["train"],
    params:
        images=config["data"]["images"],
        encoder=wc.encoder_flags(config["data"]),
        features=lambda wildcards: wc.SHARD_FEATURES.format(**wildcards),
        grid=config["data"]["grid"] or "none",
    shell:
        "capmodel data features {params.images:q} {input.captions:q} {params.features:q}"
        " --shard {wildcards.shard:q}/{wildcards.shards:q} {params.encoder:q} --grid {params.grid:q}"
        " --no-progress > {output:q} 2> {log:q}"


rule make_images_data:
    input:
        captions=config["data"]["captions"] or [],
        shards=wc.shard_records(config["data"]),
    output:
        directory("resources/data/images"),
    log:
        "logs/data/images.log",
    threads: config["resources"]["train_threads"]
    resources:
        **RESOURCES["train"],
    params:
        images=config["data"]["images"],
        encoder=wc.encoder_flags(config["data"]),
        features=wc.features_shards(config["data"]),
        pca=config["data"]["pca"] or "none",
        min_count=config["data"]["min_count"],
        val_fraction=config["data"]["val_fraction"],
        seed=config["data"]["split_seed"],
        grid=config["data"]["grid"] or "none",
        grid_pca=config["data"]["grid_pca"] or "none",
    shell:
        "capmodel data from-folder {params.images:q} {input.captions:q} {output:q} {params.encoder:q}"
        " --pca {params.pca:q} --min-count {params.min_count:q} --val-fraction {params.val_fraction:q}"
        " --seed {params.seed:q} --grid {params.grid:q} --grid-pca {params.grid_pca:q}"
        " --features {params.features:q} --no-progress > {log:q} 2>&1"
