# Stage 1: the dataset, in the CS231n on-disk format, under resources/data/.


rule make_shapes_data:
    output:
        directory("resources/data/shapes"),
    log:
        "logs/data/shapes.log",
    conda:
        ENV
    resources:
        **RESOURCES["small"],
    params:
        num_train=config["data"]["shapes"]["num_train"],
        num_val=config["data"]["shapes"]["num_val"],
        seed=config["data"]["shapes"]["seed"],
        min_count=config["data"]["shapes"]["min_count"],
    shell:
        "capmodel data shapes {output} --num-train {params.num_train} --num-val {params.num_val}"
        " --seed {params.seed} --min-count {params.min_count} > {log} 2>&1"


rule fetch_coco_data:
    output:
        directory("resources/data/coco"),
    log:
        "logs/data/coco.log",
    conda:
        ENV
    resources:
        **RESOURCES["small"],
    params:
        url=config["data"]["coco"]["url"],
        sha=(
            f"--sha256 {config['data']['coco']['sha256']}"
            if config["data"]["coco"]["sha256"]
            else ""
        ),
    shell:
        "capmodel data fetch {output} --url {params.url} {params.sha} --no-progress > {log} 2>&1"
