"""Tests of capmodel.checkpoints: plain-data checkpoints that detect corruption and mismatch."""

import json

import numpy as np
import pytest

from capmodel import checkpoints
from capmodel.classifiers.rnn import CaptioningRNN

VOCAB = {"<NULL>": 0, "<START>": 1, "<END>": 2, "<UNK>": 3, "a": 4, "cat": 5}


def _model(**kw):
    return CaptioningRNN(VOCAB, input_dim=6, wordvec_dim=4, hidden_dim=5, seed=0, **kw)


def test_model_round_trip_without_pickle(tmp_path):
    m = _model(cell_type="gru")
    checkpoints.save_model(tmp_path / "model", m, extra={"note": "x"})
    with np.load(tmp_path / "model.npz", allow_pickle=False) as z:
        assert sorted(z.files) == sorted(f"params/{k}" for k in m.params)
    loaded, meta = checkpoints.load_model(tmp_path / "model")
    assert loaded.cell_type == "gru" and meta["note"] == "x"
    assert all(np.array_equal(loaded.params[k], m.params[k]) for k in m.params)
    f = np.random.default_rng(0).standard_normal((3, 6))
    assert np.array_equal(loaded.sample(f, 8), m.sample(f, 8))


def test_a_model_file_without_a_family_holds_an_rnn(tmp_path):
    m = _model(cell_type="lstm")
    checkpoints.save_model(tmp_path / "model", m)
    meta = json.loads((tmp_path / "model.json").read_text())
    del meta["model"]["family"]  # as the model files of CaptioningRNN alone are
    (tmp_path / "model.json").write_text(json.dumps(meta))
    loaded, _ = checkpoints.load_model(tmp_path / "model")
    assert isinstance(loaded, CaptioningRNN) and loaded.cell_type == "lstm"


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "model.npz").write_bytes((d / "model.npz").read_bytes()[:100]), "do not match the checksum"),
    (lambda d: (d / "model.json").write_text('{"npz_sha'), "not valid JSON"),
    (lambda d: (d / "model.npz").unlink(), "does not exist"),
    (lambda d: (d / "model.json").write_text("{}"), "no npz_sha256"),
])
def test_corrupt_or_truncated_files_are_detected(tmp_path, damage, message):
    checkpoints.save_model(tmp_path / "model", _model())
    damage(tmp_path)
    with pytest.raises(checkpoints.CheckpointError, match=message):
        checkpoints.load_model(tmp_path / "model")


def test_vocabulary_and_shape_mismatch_are_refused(tmp_path):
    checkpoints.save_model(tmp_path / "model", _model())
    arrays, meta = checkpoints.load(tmp_path / "model")
    other_vocab = CaptioningRNN({**VOCAB, "dog": 6}, input_dim=6, wordvec_dim=4, hidden_dim=5)
    with pytest.raises(checkpoints.CheckpointError, match="vocabulary mismatch: checkpoint .* has 6 words, the model 7"):
        checkpoints.check_model_fits(other_vocab, meta, arrays, "ckpt")
    bigger = CaptioningRNN(VOCAB, input_dim=6, wordvec_dim=4, hidden_dim=8)
    with pytest.raises(checkpoints.CheckpointError, match=r"shape mismatch for parameter W_proj: .*\(6, 5\).*\(6, 8\)"):
        checkpoints.check_model_fits(bigger, meta, arrays, "ckpt")


def test_writes_are_atomic(tmp_path, monkeypatch):
    checkpoints.save_model(tmp_path / "model", _model())
    before = (tmp_path / "model.npz").read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError, match="disk full"):
        checkpoints.save_model(tmp_path / "model", _model(cell_type="lstm"))
    assert (tmp_path / "model.npz").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "model.npz"]
    assert json.loads((tmp_path / "model.json").read_text())["model"]["cell_type"] == "rnn"
