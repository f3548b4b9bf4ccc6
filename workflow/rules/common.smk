import json

# Validate the config, expand models and sweeps, and build CLI arguments (logic lives in
# capmodel.workflow_config, where the tests reach it).
from pathlib import Path

from snakemake.utils import validate

from capmodel import workflow_config as wc

validate(config, schema="../schemas/config.schema.yaml")

MODELS = wc.expand_models(config)
ENV = str(Path(workflow.basedir) / "environment.yml")
NOTEBOOKS = Path(workflow.basedir) / "workflow" / "notebooks"
SPLIT = config["sample"]["split"]


wildcard_constraints:
    model="|".join(sorted(MODELS)),


def get_data_dir():
    return f"resources/data/{config['data']['source']}"


def get_train_args(wildcards):
    return wc.train_args(MODELS[wildcards.model])


def get_sample_args():
    return wc.sample_args(config["sample"])


def get_sample_settings(kind):
    if kind == "baseline":
        return {"split": SPLIT, "method": "most_frequent_caption"}
    return wc.sample_settings(config["sample"])


def get_final_outputs():
    return [
        "results/summary.csv",
        "results/summary.md",
        "reports/summary.html",
        *expand("reports/{model}.html", model=sorted(MODELS)),
    ]
