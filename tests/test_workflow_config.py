"""Tests of capmodel.workflow_config: model and sweep expansion, CLI arguments."""

import shlex

import pytest

from capmodel import workflow_config as wc


def test_models_inherit_defaults_and_override():
    cfg = {"train_defaults": {"hidden_dim": 64, "num_epochs": 3}, "models": {"a": {"cell_type": "gru", "hidden_dim": 8}}}
    assert wc.expand_models(cfg) == {"a": {"hidden_dim": 8, "num_epochs": 3, "cell_type": "gru"}}


def test_sweep_expands_a_grid():
    cfg = {"train_defaults": {"num_epochs": 2}, "models": {},
           "sweep": {"lstm_lr": {"base": {"cell_type": "lstm"},
                                 "grid": {"learning_rate": [0.001, 0.005], "hidden_dim": [128, 256]}}}}
    models = wc.expand_models(cfg)
    assert sorted(models) == ["lstm_lr_learning_rate0.001_hidden_dim128", "lstm_lr_learning_rate0.001_hidden_dim256",
                              "lstm_lr_learning_rate0.005_hidden_dim128", "lstm_lr_learning_rate0.005_hidden_dim256"]
    assert models["lstm_lr_learning_rate0.005_hidden_dim128"] == {
        "num_epochs": 2, "cell_type": "lstm", "learning_rate": 0.005, "hidden_dim": 128}


@pytest.mark.parametrize("cfg, message", [
    ({"models": {}}, "defines no models"),
    ({"models": {"a b": {}}}, "model name 'a b'"),
    ({"models": {"a": {"hiden_dim": 3}}}, r"unknown training settings \['hiden_dim'\]"),
])
def test_bad_model_configs(cfg, message):
    with pytest.raises(ValueError, match=message):
        wc.expand_models(cfg)


def test_train_args_round_trip_through_the_cli_parser():
    from capmodel.cli import build_parser

    settings = {"cell_type": "lstm", "hidden_dim": 64, "learning_rate": 0.005, "pca_features": False,
                "grad_clip": None, "val_metric": "bleu4"}
    args = build_parser().parse_args(["train", "--data", "d", "--out-dir", "o", *shlex.split(wc.train_args(settings))])
    assert (args.cell_type, args.hidden_dim, args.learning_rate, args.no_pca, args.grad_clip, args.val_metric) == \
        ("lstm", 64, 0.005, True, None, "bleu4")


def test_sample_args_and_settings():
    sample = {"split": "val", "method": "beam", "beam_size": 3, "length_norm": 0.5, "temperature": 1.0, "seed": 0,
              "max_length": 16, "num_images": None}
    assert wc.sample_args(sample) == "--split val --method beam --max-length 16 --beam-size 3 --length-norm 0.5"
    assert wc.sample_settings(sample) == {"split": "val", "method": "beam", "beam_size": 3, "length_norm": 0.5,
                                          "max_length": 16, "num_images": None}
