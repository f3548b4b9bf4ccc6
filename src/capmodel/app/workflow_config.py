"""The workflow's config, interpreted: model and sweep expansion, settings per model.

workflow/rules/common.smk calls these after validating the config against
workflow/schemas/config.schema.yaml, so the logic is tested here and the rules stay thin.
Each model's settings and the decoding settings reach the CLI as JSON files that the
workflow writes (never re-serialised into flags). The source revision that the summary
report shows is read by a job (rule source_revision), never while the Snakefile is parsed.
"""

import itertools
import os
import re
import subprocess
import sys
from pathlib import Path

from capmodel.app import settings as S
from capmodel.safety.atomic import write_json

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # a safe path component: never "." or ".."


def _value_tag(value):
    return re.sub(r"[^A-Za-z0-9.-]", "", str(value).replace("e-0", "e-"))


SCST_SUFFIX = "+scst"  # the name of a model's self-critical fine-tuning: lstm -> lstm+scst
# Training settings that the config sets through a model's `scst:` section only.
SCST_ONLY = ("objective", "scst_samples", "scst_baseline")


def _entries(config):
    """(name, settings) of every entry of `models:` and every grid point of `sweep:`, each
    `train_defaults` overlaid by its own keys (an `scst:` section among them)."""
    defaults = dict(config.get("train_defaults") or {})
    for name, settings in (config.get("models") or {}).items():
        yield str(name), {**defaults, **(settings or {})}  # YAML reads a name like 2024 as a number
    for sweep, spec in (config.get("sweep") or {}).items():
        base = {**defaults, **(spec.get("base") or {})}
        grid = spec.get("grid") or {}
        keys = list(grid)
        for values in itertools.product(*(grid[k] for k in keys)):
            name = "_".join([str(sweep)] + [f"{k}{_value_tag(v)}" for k, v in zip(keys, values)])
            yield name, {**base, **dict(zip(keys, values))}


def expand_models(config):
    """{model name: training settings} from `models:` and every grid in `sweep:`.

    Each model's settings are `train_defaults` overlaid by its own keys. A sweep entry
    {base: {...}, grid: {key: [v1, v2], ...}} becomes one model per grid point, named
    <sweep>_<key><value>_... (e.g. lstm_lr_learning_rate0.001_hidden_dim128). A model with
    an `scst:` section adds the model <name>+scst, its self-critical fine-tuning
    (capmodel.app.settings.scst_train_settings; `fine_tuned` names where it starts).
    """
    models = {}
    for name, settings in _entries(config):
        if not NAME.fullmatch(name):
            raise ValueError(f"model name '{name}' must start with a letter or digit and contain only letters, "
                             "digits, '_', '.' and '-' (it becomes a directory name)")
        scst = settings.pop("scst", None)
        for key in SCST_ONLY:
            if key in settings:
                raise ValueError(f"models.{name}.{key}: the workflow trains with cross-entropy; self-critical "
                                 "fine-tuning and its settings go in the model's 'scst:' section")
        models[name] = S.check_train(settings, where=f"models.{name}")
        if scst is not None:
            models[name + SCST_SUFFIX] = S.check_train(
                S.scst_train_settings(models[name], scst, where=f"models.{name}.scst"), where=f"models.{name}.scst")
    if not models:
        raise ValueError("the config defines no models: add entries under 'models:' or 'sweep:'")
    return models


def fine_tuned(models):
    """{fine-tuned model: the model it starts from} among the names of expand_models."""
    return {name: name[: -len(SCST_SUFFIX)] for name in models if name.endswith(SCST_SUFFIX)}


def sampled(models):
    """Where under results/ each captioned and scored set of samples lives: models/<model> for
    each model (sorted by name), then baseline, in the order of the summary's rows."""
    return [*(f"models/{m}" for m in sorted(models)), "baseline"]


def name_pattern(names):
    """A regular expression that matches exactly one of the names: a wildcard constraint.

    Each name is escaped because model names may hold '.', '+' and '-', which are regular
    expression syntax: unescaped, the constraint of a model 'a.b' would also accept 'aXb'.
    """
    return "|".join(re.escape(name) for name in sorted(names))


def job_resources(resources):
    """Snakemake `resources:` of each kind of job, from the config's `resources:` section.

    "train" is for training jobs and "small" for every other job; each maps mem_mb (MB) and
    runtime (minutes), the names a cluster executor schedules by. The rules take theirs from
    here, so the values are read from the config in one place.
    """
    return {kind: {"mem_mb": resources[f"{kind}_mem_mb"], "runtime": resources[f"{kind}_runtime"]}
            for kind in ("small", "train")}


def source_revision(source_dir):
    """The git commit of the source in source_dir (40 hex digits), with "+uncommitted-changes"
    appended when the checkout has changes; "unknown" without git or outside a git checkout."""
    cmd = ["git", "-C", str(source_dir), "describe", "--always", "--abbrev=40", "--exclude=*",
           "--dirty=+uncommitted-changes"]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (r.returncode == 0 and r.stdout.strip()) or "unknown"


def write_source_revision(path, source_dir):
    """Write {"git_commit": source_revision(source_dir)} as JSON: a papermill parameters file
    (-f) of the summary report."""
    write_json(path, {"git_commit": source_revision(source_dir)})


def check_config(config, schema_path):
    """Raise ValueError with one short message (key, bad value, what is allowed) for the
    first config error the schema finds; Snakemake's own message dumps the whole schema."""
    import jsonschema
    import yaml

    schema = yaml.safe_load(Path(schema_path).read_text())
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(config))
    if error is None:
        return
    where = ".".join(str(p) for p in error.absolute_path) or "the config"
    if error.validator == "additionalProperties":
        known = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(known))
        raise ValueError(f"{where}: unknown key{'s' if len(extra) > 1 else ''} {', '.join(map(repr, extra))}; "
                         f"known: {', '.join(known)}")
    if error.validator == "enum":
        raise ValueError(f"{where}: {error.instance!r} is not one of {error.validator_value}")
    raise ValueError(f"{where}: {error.message}")


def put_interpreter_first_on_path():
    """Put the directory of the running interpreter first on PATH (for this process and the
    jobs it starts), so that the rules' `capmodel`, `papermill` and `jupyter` are those of the
    environment that runs Snakemake, also when it is not activated: started as
    .venv/bin/snakemake, a job would otherwise fail with exit 127 (command not found)."""
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


def report_paths(outputs):
    """The message a finished run prints: where the reports and the summary table are."""
    reports = [o for o in outputs if o.endswith(".html")]
    lines = ["capmodel: reports written:"] + [f"  {Path(r).resolve()}" for r in reports if Path(r).exists()]
    tables = [o for o in outputs if o.endswith(".md") and Path(o).exists()]
    lines += [f"capmodel: summary table: {Path(t).resolve()}" for t in tables]
    return "\n".join(lines)


def _existing(data, key, source, kind="dir"):
    """data[key] as a path that exists, else ValueError naming the key."""
    if not data.get(key):
        raise ValueError(f"data.source is '{source}' but data.{key} is not set")
    path = Path(data[key]).expanduser()
    if not (path.is_dir() if kind == "dir" else path.is_file()):
        relative = "" if path.is_absolute() else (
            f" (a relative path is relative to the workflow's working directory {Path.cwd()}, which "
            "--directory sets; an absolute path avoids the question)")
        raise ValueError(f"data.{key} {data[key]}: no such {'directory' if kind == 'dir' else 'file'}{relative}")
    return str(path)


def data_dir(data):
    """The data set directory of the config's `data:` section: made by the workflow
    (resources/data/shapes, resources/data/coco or, from data.images and data.captions,
    resources/data/images) or a user's own (source: path). The paths the section names
    are checked here, before any job runs."""
    if data["source"] == "path":
        return _existing(data, "path", "path")
    if data["source"] == "images":
        _existing(data, "images", "images")
        _existing(data, "captions", "images", kind="file")
        if data.get("weights"):
            _existing(data, "weights", "images", kind="file")
    return f"resources/data/{data['source']}"


def encoder_flags(data):
    """The --encoder (and --weights) flags of source images' extraction and merge jobs, as a list
    of arguments (a rule quotes each: {params.encoder:q})."""
    return ["--encoder", data["encoder"], *(["--weights", data["weights"]] if data.get("weights") else [])]


# Where the extraction jobs of source images keep their features files: outside the jobs'
# declared outputs (each job declares a small record, SHARD + ".json"), so that a job rerun
# after an edit of the captions file finds its complete features file and keeps it when it
# holds the same pictures (capmodel.datasets.extraction), instead of Snakemake deleting it.
SHARD = "resources/data/images.features/shard-{shard}-of-{shards}"
SHARD_FEATURES, SHARD_RECORD = SHARD + ".h5", SHARD + ".json"


def features_shards(data):
    """The features files of the extraction jobs of source images (rule extract_features)."""
    return [SHARD_FEATURES.format(shard=i, shards=data["shards"]) for i in range(1, data["shards"] + 1)]


def shard_records(data):
    """The records those jobs declare as their outputs."""
    return [SHARD_RECORD.format(shard=i, shards=data["shards"]) for i in range(1, data["shards"] + 1)]