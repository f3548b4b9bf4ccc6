"""The workflow's config, interpreted: model and sweep expansion, CLI arguments per stage.

workflow/rules/common.smk calls these after validating the config against
workflow/schemas/config.schema.yaml, so the logic is tested here and the rules stay thin.
"""

import itertools
import re
import shlex

from capmodel.pipeline import TRAIN_DEFAULTS

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # a safe path component: never "." or ".."


def _value_tag(value):
    return re.sub(r"[^A-Za-z0-9.-]", "", str(value).replace("e-0", "e-"))


def expand_models(config):
    """{model name: training settings} from `models:` and every grid in `sweep:`.

    Each model's settings are `train_defaults` overlaid by its own keys. A sweep entry
    {base: {...}, grid: {key: [v1, v2], ...}} becomes one model per grid point, named
    <sweep>_<key><value>_... (e.g. lstm_lr_learning_rate0.001_hidden_dim128).
    """
    defaults = dict(config.get("train_defaults") or {})
    models = {}
    for name, settings in (config.get("models") or {}).items():
        models[name] = {**defaults, **(settings or {})}
    for sweep, spec in (config.get("sweep") or {}).items():
        base = {**defaults, **(spec.get("base") or {})}
        grid = spec.get("grid") or {}
        keys = list(grid)
        for values in itertools.product(*(grid[k] for k in keys)):
            name = "_".join([sweep] + [f"{k}{_value_tag(v)}" for k, v in zip(keys, values)])
            models[name] = {**base, **dict(zip(keys, values))}
    for name, settings in models.items():
        if not NAME.match(name):
            raise ValueError(f"model name '{name}' must start with a letter or digit and contain only letters, digits, '_', '.' and '-' (it becomes a directory name)")
        unknown = sorted(set(settings) - set(TRAIN_DEFAULTS))
        if unknown:
            raise ValueError(f"model '{name}': unknown training settings {unknown}; known: {sorted(TRAIN_DEFAULTS)}")
    if not models:
        raise ValueError("the config defines no models: add entries under 'models:' or 'sweep:'")
    return models


def train_args(settings):
    """capmodel train flags for one model's settings."""
    args = []
    for key, value in sorted(settings.items()):
        if value is None:
            continue
        if key == "pca_features":
            if not value:
                args.append("--no-pca")
            continue
        args += [f"--{key.replace('_', '-')}", str(value)]
    return shlex.join(args)


def sample_args(sample):
    """capmodel sample flags from the config's `sample:` section."""
    args = ["--split", sample["split"], "--method", sample["method"], "--max-length", str(sample["max_length"])]
    if sample["method"] == "beam":
        args += ["--beam-size", str(sample["beam_size"]), "--length-norm", str(sample["length_norm"])]
    if sample["method"] == "temperature":
        args += ["--temperature", str(sample["temperature"]), "--seed", str(sample["seed"])]
    if sample.get("num_images"):
        args += ["--num-images", str(sample["num_images"])]
    return shlex.join(args)


def sample_settings(sample):
    """The decoding settings recorded in metrics.json."""
    keep = {"split", "method", "max_length", "num_images"}
    if sample["method"] == "beam":
        keep |= {"beam_size", "length_norm"}
    if sample["method"] == "temperature":
        keep |= {"temperature", "seed"}
    return {k: v for k, v in sample.items() if k in keep}
