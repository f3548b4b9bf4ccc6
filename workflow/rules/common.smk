import json
import sys

# Validate the config (one short message naming the key on error), expand models and
# sweeps. The logic lives in capmodel.app.workflow_config, where the tests reach it.
from pathlib import Path

from snakemake.utils import validate

from capmodel.app import settings as S
from capmodel.app import workflow_config as wc

SCHEMA = "../schemas/config.schema.yaml"
try:
    wc.check_config(config, Path(workflow.current_basedir) / SCHEMA)
    validate(config, schema=SCHEMA)
    MODELS = wc.expand_models(config)
    FINE_TUNED = wc.fine_tuned(MODELS)
    SAMPLE = S.decode_record(config["sample"])
    DATA_DIR = wc.data_dir(config["data"])
    RESOURCES = wc.job_resources(config["resources"])
except ValueError as e:
    sys.exit(f"capmodel workflow: config error: {e}")

# Jobs find capmodel, papermill and jupyter next to the interpreter that runs Snakemake,
# also when its virtualenv is not activated (Snakemake started as .venv/bin/snakemake).
wc.put_interpreter_first_on_path()
# workflow.basedir is workflow/, the directory of the Snakefile.
NOTEBOOKS = Path(workflow.basedir) / "notebooks"
SPLIT = SAMPLE["split"]
# The configured model names, escaped: a {model} wildcard matches one of them and nothing else.
MODEL_PATTERN = wc.name_pattern(MODELS)
# Models trained from scratch (rule train_model) and fine-tuned ones (rule finetune_model).
TRAINED_PATTERN = wc.name_pattern(set(MODELS) - set(FINE_TUNED))
FINE_TUNED_PATTERN = wc.name_pattern(FINE_TUNED) or "(?!)"
# Everything captioned and scored, as results/<kind>/: each model, then the baseline.
SAMPLED = wc.sampled(MODELS)


wildcard_constraints:
    model=MODEL_PATTERN,


def get_final_outputs():
    return [
        "results/summary.csv",
        "results/summary.md",
        "reports/summary.html",
        *expand("reports/{model}.html", model=sorted(MODELS)),
    ]
