"""Every setting of training, decoding and the shapes data set, defined once.

Each ``Setting`` (capmodel.setting_spec) carries its name, type, default, allowed range or
choices and help text. From these the ``capmodel`` flags are generated (``add_arguments``), values are checked
(``check`` / ``check_all``: one message naming the setting, the bad value and what is
allowed), the workflow's config schema is generated (``capmodel.app.config_schema``), and so
is config/README.md. Model families add their own settings (``SETTINGS`` on the class,
see capmodel.models); they are merged in by ``train_settings()``.
"""

import argparse
from dataclasses import replace

import numpy as np

from capmodel import models
from capmodel.classifiers.inputs import ATTENTION_CHOICES, ATTENTION_PENALTY
from capmodel.datasets import shapes
from capmodel.datasets.format import ALL_SPLITS, GRID_PCA_DIM
from capmodel.decoding import METHODS as DECODING_METHODS
from capmodel.optim import RULES
from capmodel.scst import BASELINES as SCST_BASELINES, SelfCritical
from capmodel.setting_spec import Setting, SettingError
from capmodel.schedules import SCHEDULES as LR_SCHEDULES
from capmodel.validation import METRICS as VAL_METRICS


UPDATE_RULES = tuple(RULES)
OBJECTIVES = ("xe", "scst")

# Training settings shared by every model family (a family adds its own in SETTINGS).
TRAIN = (
    Setting("wordvec_dim", int, 128, "word vector size W (the model width of a transformer)", minimum=1),
    Setting("hidden_dim", int, 256, "hidden state size H (a transformer's feed-forward size)", minimum=1),
    Setting("dropout", float, 0.0, "dropout on embedded words and hidden states", minimum=0, exclusive_maximum=1),
    Setting("attention", str, "none", "attend over image regions: none (the global feature vector only) or soft "
            "(Show, Attend and Tell for rnn/lstm/gru; the transformer cross-attends over the regions); soft needs "
            "a data set with a grid of regions", choices=ATTENTION_CHOICES),
    Setting("attention_penalty", float, ATTENTION_PENALTY, "weight lambda of the doubly stochastic attention penalty "
            "lambda * sum_l (1 - sum_t alpha_tl)^2 (rnn/lstm/gru with attention soft; Show, Attend and Tell "
            "used 1)", minimum=0),
    Setting("region_positions", bool, True, "give each region a learned embedding of its place in the grid "
            "(attention soft): the model can say where it looked, and takes only the grid it was trained on"),
    Setting("update_rule", str, "adam", "optimizer", choices=UPDATE_RULES),
    Setting("learning_rate", float, 5e-3, "initial learning rate", exclusive_minimum=0, maximum=10),
    Setting("lr_decay", float, 0.95, "per-epoch learning rate factor (CS231n)", exclusive_minimum=0, maximum=1),
    Setting("lr_schedule", str, None, "schedule replacing the CS231n per-epoch decay", choices=LR_SCHEDULES,
       optional=True),
    Setting("lr_step_size", int, 1, "epochs per step of the step schedule", minimum=1),
    Setting("lr_gamma", float, 0.1, "factor of the step schedule", exclusive_minimum=0, maximum=1),
    Setting("warmup_iterations", int, 0, "linear learning rate warm-up (iterations)", minimum=0),
    Setting("min_lr", float, 0.0, "final learning rate of the cosine schedule", minimum=0),
    Setting("batch_size", int, 100, "captions per minibatch", minimum=1),
    Setting("num_epochs", int, 10, "training epochs", minimum=1),
    Setting("max_iterations", int, None, "stop after this many iterations", minimum=1, optional=True),
    Setting("seed", int, 0, "seed for weights, minibatches and dropout", minimum=0),
    Setting("grad_clip", float, None, "clip gradients to this global L2 norm", exclusive_minimum=0, optional=True),
    Setting("max_train", int, None, "subsample this many training captions", minimum=1, optional=True),
    Setting("pca_features", bool, True, "use the 512-d PCA features (false = the full fc7 features)"),
    Setting("val_metric", str, None, "score greedy validation captions with this metric every epoch",
       choices=VAL_METRICS, optional=True),
    Setting("val_metric_images", int, 200, "validation images for the metric", minimum=1),
    Setting("val_size", int, 5000, "validation captions for the validation loss", minimum=1),
    Setting("patience", int, None, "stop early after this many epochs without improvement", minimum=1, optional=True),
    Setting("checkpoint_every", int, None, "also write a resumable checkpoint every N iterations", minimum=1,
       optional=True),
    Setting("print_every", int, 50, "log the training loss every N iterations", minimum=1),
    Setting("objective", str, "xe", "training objective: cross-entropy (xe) or self-critical CIDEr-D (scst, "
            "fine-tunes a trained model given by --init-from; validated by CIDEr-D)", choices=OBJECTIVES),
    Setting("scst_samples", int, 5, "captions sampled per image by self-critical training", minimum=1),
    Setting("scst_baseline", str, "greedy", "self-critical baseline: the greedy caption's CIDEr-D (greedy) or "
            "the mean of the image's other samples (mean)", choices=SCST_BASELINES),
)

# Self-critical fine-tuning of a workflow model (config `models: NAME: scst:`): the workflow
# trains NAME+scst from NAME's kept model, with NAME's settings and these on top
# (scst_train_settings). Lower learning rate than cross-entropy, as Rennie et al.
_TRAIN = {t.name: t for t in TRAIN}
SCST = (
    replace(_TRAIN["num_epochs"], default=2, help="epochs of self-critical fine-tuning"),
    replace(_TRAIN["learning_rate"], default=5e-4, help="learning rate of the fine-tuning"),
    replace(_TRAIN["scst_samples"], name="samples"),
    replace(_TRAIN["scst_baseline"], name="baseline"),
)
# The training setting each SCST key sets.
SCST_TRAIN_KEYS = {"num_epochs": "num_epochs", "learning_rate": "learning_rate", "samples": "scst_samples",
                   "baseline": "scst_baseline"}
# The fine-tuned model's validation metric: CIDEr-D on val, the metric it is trained for.
SCST_VAL_METRIC = SelfCritical.metric
# The defaults that depend on the objective: `capmodel train --objective scst` without
# --learning-rate or --num-epochs takes those of the workflow's `scst:` section (SCST above).
OBJECTIVE_DEFAULTS = {"xe": {}, "scst": {SCST_TRAIN_KEYS[s.name]: s.default for s in SCST}}
# Defaults that depend on another setting's value, for the settings a user leaves out, in
# this order (a later one wins): a model family's own (its DEFAULTS), then the objective's.
CHOICE_DEFAULTS = {
    **{("cell_type", cell): fam.DEFAULTS for fam in models.FAMILIES for cell in fam.CELL_TYPES if fam.DEFAULTS},
    **{("objective", objective): values for objective, values in OBJECTIVE_DEFAULTS.items() if values},
}

# How captions are decoded and which images (capmodel sample, config `sample:`).
DECODE = (
    Setting("split", str, "val", "split to caption and evaluate (test: data sets that have one, such as "
            "Karpathy's splits)", choices=ALL_SPLITS),
    Setting("method", str, "beam", "decoder", choices=DECODING_METHODS),
    Setting("beam_size", int, 3, "beam width (method beam)", minimum=1),
    Setting("length_norm", float, 0.0, "rank beams by logp / length ** length_norm (method beam)", minimum=0),
    Setting("temperature", float, 1.0, "softmax temperature (method temperature)", exclusive_minimum=0),
    Setting("seed", int, 0, "seed of temperature sampling", minimum=0),
    Setting("max_length", int, 16, "maximum caption length", minimum=1, maximum=100),
    Setting("num_images", int, None, "caption only the first N images (null = all)", minimum=1, optional=True),
)
# Which decoding settings each method uses (the others are not recorded).
METHOD_SETTINGS = {"greedy": (), "beam": ("beam_size", "length_norm"), "temperature": ("temperature", "seed")}
# `capmodel caption` decodes with the same settings and defaults as `capmodel sample`, so one
# model gives one caption for a picture; which images, it is told by its arguments.
CAPTION_DECODE = tuple(s for s in DECODE if s.name not in ("split", "num_images"))

# The grid of region features a data set made from pictures stores for attention models
# (capmodel data from-folder / features --grid, config `data: grid:, grid_pca:`).
DATA_GRID = (
    Setting("grid", int, None, "also store each picture's regions: the encoder's grid layer average-pooled to "
            "G x G (at most the layer's own side: 7 for the 224-pixel CNNs, 16 for randconv at 64 pixels)",
            minimum=1, optional=True),
    Setting("grid_pca", int, GRID_PCA_DIM, "components K of the PCA fitted on the train regions, every region a "
            "row (K >= the encoder's channels keeps them all, centred and rotated); null: the encoder's channels; "
            "either way each channel is then standardised over the train regions", minimum=1, optional=True),
)
_GRID = {g.name: g for g in DATA_GRID}

# The embedded shapes data set (capmodel data shapes, config `data: shapes:`).
SHAPES = (
    Setting("num_train", int, 4000, "training images (5 captions each)", minimum=1),
    Setting("num_val", int, 500, "validation images (5 captions each)", minimum=1),
    Setting("seed", int, 0, "seed for scenes, captions and everything random", minimum=0),
    Setting("min_count", int, 5, "training words seen fewer times become <UNK>", minimum=1),
    replace(_GRID["grid"], default=shapes.DEFAULT_GRID, help="grid of region features for attention models: the "
            "random-conv encoder's second layer (16 x 16 at 64 pixels, 128 channels) average-pooled to G x G",
            maximum=shapes.MAP_SIDE),
    replace(_GRID["grid_pca"], default=shapes.DEFAULT_GRID_PCA, help="components K of a PCA fitted on the train "
            "regions (K >= 128 keeps them all, centred and rotated); null: the 128 channels; either way each "
            "channel is then standardised over the train regions"),
)


def train_settings():
    """The training settings: TRAIN, `cell_type` and every model family's own settings."""
    cell = Setting("cell_type", str, "lstm", "decoder: " + ", ".join(
        f"{c} ({models.family_of(c).__name__})" for c in models.cell_types()), choices=models.cell_types())
    extra = tuple(s for fam in models.FAMILIES for s in getattr(fam, "SETTINGS", ()))
    return (cell,) + TRAIN + extra


def by_name(settings):
    return {s.name: s for s in settings}


def defaults(settings):
    return {s.name: s.default for s in settings}


def check_all(values, settings, where="settings"):
    """Every value checked against its setting, defaults filled in; unknown keys raise.

    Returns a new dict with all settings. Messages name `where.key`.
    """
    if not isinstance(values, dict):
        raise SettingError(f"{where} must be a mapping of setting -> value, got {type(values).__name__}")
    known = by_name(settings)
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise SettingError(f"{where}: unknown setting{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                           f"known: {', '.join(sorted(known))}")
    out = defaults(settings)
    for key, value in values.items():
        out[key] = known[key].check(value, where=f"{where}.{key}")
    return out


# Settings read by some learning-rate schedules only (capmodel.schedules); given for
# another schedule, or with none (CS231n's per-epoch decay), they would change nothing.
SCHEDULE_ONLY = {"warmup_iterations": LR_SCHEDULES, "min_lr": ("cosine",), "lr_step_size": ("step",),
                 "lr_gamma": ("step",)}


def check_train(values, where="settings"):
    """check_all over train_settings(), with the objective's own defaults
    and the family's (CHOICE_DEFAULTS) for the settings values leaves out, plus what one setting alone
    cannot say: the mean baseline needs at least two samples per image, and a setting of
    a learning-rate schedule needs that schedule (SCHEDULE_ONLY)."""
    s = check_all(values, train_settings(), where)
    defaults = {t.name: t.default for t in TRAIN}
    for key, schedules in SCHEDULE_ONLY.items():
        if s[key] != defaults[key] and s["lr_schedule"] not in schedules:
            used = "any lr_schedule" if schedules == LR_SCHEDULES else f"lr_schedule {' or '.join(schedules)}"
            now = f"lr_schedule {s['lr_schedule']}" if s["lr_schedule"] else "no lr_schedule (CS231n's decay)"
            raise SettingError(f"{where}.{key} {s[key]} does nothing with {now}: it is read by {used} only"
                               + (" (exponential is CS231n's decay, with a warm-up)" if key == "warmup_iterations"
                                  else ""))
    for (key, choice), chosen in CHOICE_DEFAULTS.items():
        if s[key] == choice:
            s.update({k: v for k, v in chosen.items() if k not in values})
    if s["scst_baseline"] == "mean" and s["scst_samples"] < 2:
        raise SettingError(f"{where}.scst_samples must be >= 2 with scst_baseline mean, got {s['scst_samples']}")
    if s["objective"] == "scst":  # validated by the metric it trains for
        if s["val_metric"] not in (None, SCST_VAL_METRIC):
            raise SettingError(f"{where}.val_metric must be {SCST_VAL_METRIC} (or unset) with objective scst, "
                               f"got {s['val_metric']!r}")
        s["val_metric"] = SCST_VAL_METRIC
    return s


def scst_train_settings(settings, scst, where="scst"):
    """The training settings of a model's self-critical fine-tuning: the model's own
    settings, objective scst, CIDEr-D validation and the `scst:` section's values."""
    section = check_all(scst or {}, SCST, where)
    if section["baseline"] == "mean" and section["samples"] < 2:
        raise SettingError(f"{where}.samples must be >= 2 with baseline mean, got {section['samples']}")
    return {**settings, "objective": "scst", "val_metric": SCST_VAL_METRIC,
            **{SCST_TRAIN_KEYS[k]: v for k, v in section.items()}}


def decode_record(values):
    """The decoding settings that matter for values['method'] (what `capmodel sample` records)."""
    s = check_all(values, DECODE, "sample")
    keep = {"split", "method", "max_length", "num_images", *METHOD_SETTINGS[s["method"]]}
    return {k: v for k, v in s.items() if k in keep}


def sample_options(record):
    """(method, keyword arguments of a model's sample()) of a decoding record (decode_record):
    the settings its method uses, temperature sampling's seed as a generator."""
    options = {k: record[k] for k in METHOD_SETTINGS[record["method"]]}
    if "seed" in options:
        options["rng"] = np.random.default_rng(options.pop("seed"))
    return record["method"], options


def decode_label(record):
    """A short name for a decoding record: greedy, beam3, beam3-norm0.7, temperature0.5."""
    method = record["method"]
    if method == "beam":
        return f"beam{record['beam_size']}" + (f"-norm{record['length_norm']:g}" if record["length_norm"] else "")
    if method == "temperature":
        return f"temperature{record['temperature']:g}"
    return method


def add_arguments(parser, settings, by_choice=None):
    """Add one flag per setting to an argparse parser, with its range and default in the help.

    The flags default to None, so that only the flags a user gave override a settings
    file; the help still shows the setting's default, and with by_choice (CHOICE_DEFAULTS)
    the default each model family or objective gives it.
    """
    for s in settings:
        shown = "null (off)" if s.default is None else s.default
        for (key, choice), values in (by_choice or {}).items():
            if s.name in values and values[s.name] != s.default:
                shown = f"{shown}, {values[s.name]} with --{key.replace('_', '-')} {choice}"
        help_text = f"{s.help} ({s.allowed()}; default {shown})"
        if s.kind is bool:
            parser.add_argument(s.flag, dest=s.name, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)
        else:
            parser.add_argument(s.flag, dest=s.name, type=s.parse, default=_unset(s), metavar=s.name.upper(),
                                help=help_text)


def _unset(setting):
    """A flag's argparse default: None, or, for an optional setting that is on by default, no
    attribute at all, so that 'none' given on the command line (None) switches it off."""
    return argparse.SUPPRESS if setting.optional and setting.default is not None else None


def from_args(args, settings):
    """The settings a user gave on the command line (flags left out are not included)."""
    return {s.name: getattr(args, s.name) for s in settings
            if getattr(args, s.name, None) is not None or (_unset(s) is argparse.SUPPRESS and hasattr(args, s.name))}
