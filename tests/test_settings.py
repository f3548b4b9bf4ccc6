"""Settings defined once (capmodel.app.settings): the CLI flags, the config schema and
config/README.md are generated from them, and all agree."""

import math
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from capmodel.app import config_schema
from capmodel.app import settings as S
from capmodel.app.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
GROUPS = {"train": S.train_settings(), "sample": S.DECODE, "shapes": S.SHAPES}
PROBES = [None, True, -1, 0, 0.5, 1, 2, 17, 1e6, -0.5, float("nan"), float("inf"), "lstm", "beam", "adam", "val"]


def test_generated_files_are_up_to_date():
    assert (ROOT / config_schema.SCHEMA_FILE).read_text() == config_schema.schema_yaml(), \
        "run: python -m capmodel.app.config_schema"
    assert (ROOT / config_schema.README_FILE).read_text() == config_schema.readme(), \
        "run: python -m capmodel.app.config_schema"


def test_the_schema_file_is_plain_yaml_without_anchors():
    # Repeated parts (a model's training settings) are written out each time, so a reader of
    # the file never has to look an alias up; the file reads back as the schema.
    text = (ROOT / config_schema.SCHEMA_FILE).read_text()
    assert not any(line.lstrip().startswith(("&", "*")) or ": &" in line or ": *" in line
                   for line in text.splitlines()), "YAML anchors or aliases in the schema"
    assert yaml.safe_load(text) == config_schema.schema()


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_schema_accepts_exactly_what_the_settings_accept(group):
    schema = yaml.safe_load((ROOT / config_schema.SCHEMA_FILE).read_text())
    for setting in GROUPS[group]:
        if group == "train":
            prop = schema["$defs"]["train_settings"]["properties"][setting.name]
        elif group == "sample":
            prop = schema["properties"]["sample"]["properties"][setting.name]
        else:
            prop = schema["properties"]["data"]["properties"]["shapes"]["properties"][setting.name]
        for value in PROBES:
            try:
                setting.check(value)
                ok = True
            except S.SettingError:
                ok = False
            if isinstance(value, float) and not math.isfinite(value):
                continue  # YAML/JSON configs cannot hold NaN; the settings check catches it anyway
            valid = jsonschema.Draft202012Validator(prop).is_valid(value)
            assert valid == ok, (group, setting.name, value)


@pytest.mark.parametrize("command, group", [(["train"], "train"), (["sample"], "sample"),
                                            (["data", "shapes"], "shapes")])
def test_every_setting_is_a_flag_with_its_default_in_the_help(command, group):
    help_text = subprocess.run([sys.executable, "-m", "capmodel.app.cli", *command, "--help"], capture_output=True,
                               text=True, env={"COLUMNS": "1000", "PATH": ""}).stdout
    for s in GROUPS[group]:
        shown = "null (off)" if s.default is None else s.default
        for (key, choice), values in S.CHOICE_DEFAULTS.items() if group == "train" else ():
            if s.name in values and values[s.name] != s.default:  # e.g. SCST's learning rate
                shown = f"{shown}, {values[s.name]} with --{key.replace('_', '-')} {choice}"
        assert s.flag in help_text and f"default {shown})" in help_text, s.name


def test_a_changed_default_shows_up_in_help_and_docs(monkeypatch):
    changed = tuple(S.Setting(**{**s.__dict__, "default": 321}) if s.name == "hidden_dim" else s for s in S.TRAIN)
    monkeypatch.setattr(S, "TRAIN", changed)
    helps = {a.dest: a.help for a in build_parser()._subparsers._group_actions[0].choices["train"]._actions}
    assert "default 321)" in helps["hidden_dim"]
    assert "hidden_dim: 321" in config_schema.readme()
    assert S.defaults(S.train_settings())["hidden_dim"] == 321


@pytest.mark.parametrize("flag, value, message", [
    ("--learning-rate", "-1", "argument --learning-rate: must be finite number > 0 and <= 10, got '-1'"),
    ("--learning-rate", "0", "argument --learning-rate: must be finite number > 0"),
    ("--learning-rate", "1e6", "argument --learning-rate: must be finite number > 0 and <= 10, got '1e6'"),
    ("--lr-decay", "-1", "argument --lr-decay: must be finite number > 0 and <= 1"),
    ("--lr-decay", "nan", "argument --lr-decay: must be finite number"),
    ("--seed", "-1", "argument --seed: must be integer >= 0, got '-1'"),
    ("--hidden-dim", "2.5", "argument --hidden-dim: must be integer >= 1, got '2.5'"),
    ("--cell-type", "lstn", "argument --cell-type: must be one of rnn, lstm, gru"),
])
def test_train_flags_are_checked_before_anything_runs(tmp_path, flag, value, message):
    out = subprocess.run([sys.executable, "-m", "capmodel.app.cli", "train", "--data", str(tmp_path / "none"),
                          "--out-dir", str(tmp_path / "o"), flag, value], capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("capmodel train: error: "), out.stderr
    assert message in out.stderr
    assert list(tmp_path.iterdir()) == []


def test_sample_rejects_nan_length_norm(tmp_path):
    out = subprocess.run([sys.executable, "-m", "capmodel.app.cli", "sample", "--model", "m", "--data", "d",
                          "--out", str(tmp_path / "s.csv"), "--length-norm", "nan"], capture_output=True, text=True)
    assert out.returncode == 2 and "argument --length-norm: must be finite number >= 0" in out.stderr


@pytest.mark.parametrize("values, message", [
    ({"hidden_dim": True}, "settings.hidden_dim must be integer >= 1, got True"),
    ({"pca_features": "no"}, "settings.pca_features must be boolean"),
    ({"grad_clip": None, "patience": 0}, "settings.patience must be integer >= 1 or null"),
    ({"cell_type": "gru", "colour": 1}, "unknown setting colour"),
])
def test_check_all_names_the_setting(values, message):
    with pytest.raises(S.SettingError, match=message.replace("(", r"\(").replace(")", r"\)")):
        S.check_all(values, S.train_settings())


def test_check_all_fills_defaults_and_converts():
    s = S.check_all({"hidden_dim": 64.0, "learning_rate": 1}, S.train_settings())
    assert s["hidden_dim"] == 64 and isinstance(s["hidden_dim"], int) and isinstance(s["learning_rate"], float)
    assert s["cell_type"] == "lstm" and s["grad_clip"] is None


@pytest.mark.parametrize("given, message", [
    ({"warmup_iterations": 100}, "warmup_iterations 100 does nothing with no lr_schedule (CS231n's decay)"),
    ({"min_lr": 0.001, "lr_schedule": "step"}, "min_lr 0.001 does nothing with lr_schedule step: it is read by "
                                               "lr_schedule cosine only"),
    ({"lr_step_size": 3}, "lr_step_size 3 does nothing with no lr_schedule"),
    ({"lr_gamma": 0.5, "lr_schedule": "cosine"}, "lr_gamma 0.5 does nothing with lr_schedule cosine"),
])
def test_a_schedule_setting_without_its_schedule_is_refused_not_ignored(given, message):
    """A warm-up given without a schedule used to be dropped silently: the run trained as if unset."""
    from capmodel.app import settings as S

    with pytest.raises(S.SettingError, match=re.escape(message)):
        S.check_train(given)
    for key, schedules in S.SCHEDULE_ONLY.items():  # each with a schedule that reads it is accepted
        value = {k: v for k, v in given.items() if k != "lr_schedule"}
        if key in value:
            assert S.check_train({**value, "lr_schedule": schedules[-1]})[key] == value[key]


def test_a_model_familys_defaults_apply_unless_given_and_the_objectives_win():
    assert S.check_train({"cell_type": "lstm"})["learning_rate"] == 5e-3
    assert S.check_train({"cell_type": "transformer"})["learning_rate"] == 2e-3  # the family's own default
    assert S.check_train({"cell_type": "transformer", "learning_rate": 0.01})["learning_rate"] == 0.01
    assert S.check_train({"cell_type": "transformer", "objective": "scst"})["learning_rate"] == 5e-4
