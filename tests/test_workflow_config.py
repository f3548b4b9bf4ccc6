"""Tests of capmodel.app.workflow_config: model and sweep expansion, settings files, short config errors."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from capmodel.app import settings as S
from capmodel.app import workflow_config as wc
from capmodel.safety.atomic import write_json

SCHEMA = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"
DEFAULTS = S.defaults(S.train_settings())


def test_models_inherit_defaults_and_override():
    cfg = {"train_defaults": {"hidden_dim": 64, "num_epochs": 3}, "models": {"a": {"cell_type": "gru", "hidden_dim": 8}}}
    assert wc.expand_models(cfg) == {"a": {**DEFAULTS, "hidden_dim": 8, "num_epochs": 3, "cell_type": "gru"}}


def test_sweep_expands_a_grid():
    cfg = {"train_defaults": {"num_epochs": 2}, "models": {},
           "sweep": {"lstm_lr": {"base": {"cell_type": "lstm"},
                                 "grid": {"learning_rate": [0.001, 0.005], "hidden_dim": [128, 256]}}}}
    models = wc.expand_models(cfg)
    assert sorted(models) == ["lstm_lr_learning_rate0.001_hidden_dim128", "lstm_lr_learning_rate0.001_hidden_dim256",
                              "lstm_lr_learning_rate0.005_hidden_dim128", "lstm_lr_learning_rate0.005_hidden_dim256"]
    assert models["lstm_lr_learning_rate0.005_hidden_dim128"] == {
        **DEFAULTS, "num_epochs": 2, "cell_type": "lstm", "learning_rate": 0.005, "hidden_dim": 128}


@pytest.mark.parametrize("cfg, message", [
    ({"models": {}}, "defines no models"),
    ({"models": {"a b": {}}}, "model name 'a b'"),
    ({"models": {"a": {"hiden_dim": 3}}}, r"models.a: unknown setting hiden_dim; known: .*hidden_dim"),
    ({"models": {"a": {"seed": -1}}}, r"models.a.seed must be integer >= 0, got -1"),
    ({"models": {"a": {"learning_rate": float("nan")}}}, r"models.a.learning_rate must be finite number > 0"),
    ({"sweep": {"s": {"grid": {"lr_decay": [0.5, -1]}}}}, r"models.s_lr_decay-1.lr_decay must be"),
])
def test_bad_model_configs(cfg, message):
    with pytest.raises(ValueError, match=message):
        wc.expand_models(cfg)


@pytest.mark.parametrize("text, matches", [
    ("a.b", True), ("lstm+scst", True), ("m-1", True),
    ("aXb", False), ("lstmmscst", False), ("lstm+scst/x", False), ("a.b.c", False), ("m", False), ("", False),
])
def test_name_pattern_matches_exactly_the_names(text, matches):
    # Used as (?P<model>...) by Snakemake, inside a path: a regex character in a name is literal.
    pattern = re.compile(rf"results/models/(?P<model>{wc.name_pattern(['m-1', 'a.b', 'lstm+scst'])})/model.npz")
    assert bool(pattern.fullmatch(f"results/models/{text}/model.npz")) == matches


def test_decode_record_keeps_what_the_method_uses():
    sample = {"split": "val", "method": "beam", "beam_size": 3, "length_norm": 0.5, "temperature": 1.0, "seed": 0,
              "max_length": 16, "num_images": None}
    assert S.decode_record(sample) == {"split": "val", "method": "beam", "beam_size": 3, "length_norm": 0.5,
                                          "max_length": 16, "num_images": None}
    with pytest.raises(ValueError, match=r"sample.length_norm must be finite number >= 0, got nan"):
        S.decode_record({**sample, "length_norm": float("nan")})


@pytest.mark.parametrize("config, message", [
    ({"sampel": {}}, r"^the config: unknown key 'sampel'; known: data, evaluate"),
    ({"sample": {"method": "beem"}}, r"^sample.method: 'beem' is not one of \['greedy', 'beam', 'temperature'\]$"),
    ({"models": {"a": {"hidden_dim": 0}}}, r"^models.a.hidden_dim: 0 is less than the minimum of 1$"),
    ({"models": {"..": {}}}, r"does not match"),
])
def test_config_errors_are_one_short_line(config, message):
    with pytest.raises(ValueError, match=message) as e:
        wc.check_config(config, SCHEMA)
    assert "\n" not in str(e.value) and len(str(e.value)) < 300


def test_job_resources_per_kind():
    resources = {"train_threads": 2, "train_mem_mb": 4000, "train_runtime": 120, "small_mem_mb": 2000,
                 "small_runtime": 30}
    assert wc.job_resources(resources) == {"small": {"mem_mb": 2000, "runtime": 30},
                                           "train": {"mem_mb": 4000, "runtime": 120}}


def test_settings_files_round_trip(tmp_path):
    from capmodel.app.cli import main
    from capmodel.app.pipeline import read_settings_file

    settings = wc.expand_models({"models": {"a": {"cell_type": "rnn"}}})["a"]
    # what rule model_settings runs: the settings as JSON on the command line, written indented
    assert main(["settings", json.dumps(settings), "--out", str(tmp_path / "s.json")]) == 0
    write_json(tmp_path / "direct.json", settings)
    assert (tmp_path / "s.json").read_bytes() == (tmp_path / "direct.json").read_bytes()
    assert S.check_all(read_settings_file(tmp_path / "s.json"), S.train_settings()) == settings


def _git(cwd, *args):
    return subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_source_revision_of_a_checkout(tmp_path):
    repo = tmp_path / "repo"
    (repo / "workflow").mkdir(parents=True)
    (repo / "workflow" / "Snakefile").write_text("rule all:\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init")
    head = _git(repo, "rev-parse", "HEAD")
    assert re.fullmatch(r"[0-9a-f]{40}", head)
    assert wc.source_revision(repo / "workflow") == head
    (repo / "workflow" / "Snakefile").write_text("rule all:\n    input: []\n")
    assert wc.source_revision(repo / "workflow") == head + "+uncommitted-changes"
    from capmodel.app.cli import main

    assert main(["source-revision", str(repo / "workflow"), "--out", str(tmp_path / "rev.json")]) == 0  # the rule's
    assert json.loads((tmp_path / "rev.json").read_text()) == {"git_commit": head + "+uncommitted-changes"}


def test_source_revision_is_unknown_outside_a_checkout_or_without_git(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # no repository above tmp_path counts
    (tmp_path / "src").mkdir()
    assert wc.source_revision(tmp_path / "src") == "unknown"
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))  # no git at all
    assert wc.source_revision(Path(__file__).parent) == "unknown"


def test_an_scst_section_adds_the_fine_tuned_model():
    cfg = {"train_defaults": {"num_epochs": 8, "learning_rate": 0.005}, "models": {
        "lstm": {"cell_type": "lstm", "scst": {"learning_rate": 1e-4, "baseline": "mean"}}, "gru": {"cell_type": "gru"}},
        "sweep": {"s": {"base": {"scst": {}}, "grid": {"hidden_dim": [8]}}}}
    models = wc.expand_models(cfg)
    assert sorted(models) == ["gru", "lstm", "lstm+scst", "s_hidden_dim8", "s_hidden_dim8+scst"]
    lstm = models["lstm"]
    assert lstm["objective"] == "xe" and lstm["num_epochs"] == 8
    assert models["lstm+scst"] == {**lstm, "objective": "scst", "val_metric": "cider", "learning_rate": 1e-4,
                                   "num_epochs": 2, "scst_samples": 5, "scst_baseline": "mean"}
    assert models["s_hidden_dim8+scst"]["learning_rate"] == S.by_name(S.SCST)["learning_rate"].default
    assert wc.fine_tuned(models) == {"lstm+scst": "lstm", "s_hidden_dim8+scst": "s_hidden_dim8"}


@pytest.mark.parametrize("cfg, message", [
    ({"models": {"a": {"scst": {"samples": 0}}}}, r"models.a.scst.samples must be integer >= 1, got 0"),
    ({"models": {"a": {"scst": {"baseline": "best"}}}}, r"models.a.scst.baseline must be one of greedy, mean"),
    ({"models": {"a": {"scst": {"epochs": 2}}}}, r"models.a.scst: unknown setting epochs; known: baseline, "),
    ({"models": {"a": {"objective": "scst"}}}, r"models.a.objective: the workflow trains with cross-entropy; "
                                               r"self-critical fine-tuning and its settings go in the model's"),
    ({"train_defaults": {"objective": "scst"}, "models": {"a": {}}}, r"^models.a.objective: the workflow trains"),
    ({"models": {"a": {"scst_baseline": "mean", "scst": {}}}}, r"^models.a.scst_baseline: the workflow trains"),
    ({"models": {"a": {"scst": {"baseline": "mean", "samples": 1}}}},
     r"^models.a.scst.samples must be >= 2 with baseline mean, got 1$"),
])
def test_bad_scst_sections(cfg, message):
    with pytest.raises(ValueError, match=message):
        wc.expand_models(cfg)


def test_the_schema_takes_an_scst_section_and_names_a_bad_key():
    wc.check_config({"models": {"a": {"cell_type": "lstm", "scst": {"num_epochs": 1, "samples": 3}}}}, SCHEMA)
    with pytest.raises(ValueError, match=r"^models.a.scst: unknown key 'sampels'; known: baseline, learning_rate, "
                                         r"num_epochs, samples$"):
        wc.check_config({"models": {"a": {"scst": {"sampels": 3}}}}, SCHEMA)


def test_a_data_path_that_is_no_directory_is_a_config_error_saying_relative_to_what(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").mkdir()
    assert wc.data_dir({"source": "path", "path": "mine"}) == "mine"
    assert wc.data_dir({"source": "path", "path": str(tmp_path / "mine")}) == str(tmp_path / "mine")
    with pytest.raises(ValueError, match=rf"^data.path nowhere/data: no such directory \(a relative path is relative "
                                         rf"to the workflow's working directory {re.escape(str(tmp_path))}, which "
                                         r"--directory sets"):
        wc.data_dir({"source": "path", "path": "nowhere/data"})
    with pytest.raises(ValueError, match=r"^data.path /nowhere/data: no such directory$"):
        wc.data_dir({"source": "path", "path": "/nowhere/data"})


def test_scst_null_switches_the_fine_tuning_off():
    assert sorted(wc.expand_models({"models": {"a": {"scst": None}}})) == ["a"]
    wc.check_config({"models": {"a": {"cell_type": "lstm", "scst": None}}}, SCHEMA)


def test_scst_null_passes_the_validation_snakemake_runs_and_a_section_gets_its_defaults():
    # Snakemake's validate() also fills in the schema's defaults, which must never be tried on a null section.
    from snakemake.utils import validate

    off = {"models": {"a": {"cell_type": "lstm", "scst": None}}}
    validate(off, schema=str(SCHEMA))
    assert off["models"]["a"]["scst"] is None and sorted(wc.expand_models(off)) == ["a"]
    on = {"models": {"a": {"cell_type": "lstm", "scst": {"samples": 3}}}}
    validate(on, schema=str(SCHEMA))
    assert on["models"]["a"]["scst"] == {**S.defaults(S.SCST), "samples": 3}
    assert sorted(wc.expand_models(on)) == ["a", "a+scst"]


def test_the_sampled_sets_are_each_model_then_the_baseline():
    assert wc.sampled({"lstm": {}, "gru": {}, "lstm+scst": {}}) == [
        "models/gru", "models/lstm", "models/lstm+scst", "baseline"]
