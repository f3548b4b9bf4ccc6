"""Self-critical sequence training: per-caption weighted losses, the SCST objective, the
solver and the `capmodel train --objective scst` command."""

import csv
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from capmodel import decoding
from capmodel.captioning_solver import CaptioningSolver, TrainingError
from capmodel.classifiers.rnn import CaptioningRNN
from capmodel.classifiers.transformer import CaptioningTransformer
from capmodel.datasets import features as feat
from capmodel.scst import SelfCritical
from synthetic import random_data

FAMILIES = [("rnn", {}), ("lstm", {}), ("gru", {}), ("transformer", {"num_heads": 2, "num_layers": 1})]


def _model(data, cell, extra, dtype=np.float64, seed=0):
    if cell == "transformer":
        return CaptioningTransformer(data["word_to_idx"], input_dim=16, wordvec_dim=8, hidden_dim=12, max_length=20,
                                     dtype=dtype, seed=seed, **extra)
    return CaptioningRNN(data["word_to_idx"], input_dim=16, wordvec_dim=8, hidden_dim=12, cell_type=cell,
                         dtype=dtype, seed=seed)


@pytest.mark.parametrize("cell, extra", FAMILIES)
def test_weighted_loss_is_the_weighted_sum_of_caption_losses(cell, extra):
    """loss(weights=w) = sum_i w_i * loss of caption i alone / N, gradients alike."""
    data = random_data()
    model = _model(data, cell, extra)
    features, captions = data["train_features"][:5], data["train_captions"][:5]
    w = np.array([0.5, -1.0, 2.0, 0.0, 1.5])
    loss, grads = model.loss(features, captions, weights=w)
    singles = [model.loss(features[i:i + 1], captions[i:i + 1]) for i in range(5)]
    assert loss == pytest.approx(sum(wi * li for wi, (li, _) in zip(w, singles)) / 5, rel=1e-12)
    for k in grads:
        np.testing.assert_allclose(grads[k], sum(wi * g[k] for wi, (_, g) in zip(w, singles)) / 5, atol=1e-12)


@pytest.mark.parametrize("cell, extra", FAMILIES)
def test_unit_weights_change_nothing(cell, extra):
    data = random_data()
    model = _model(data, cell, extra)
    features, captions = data["train_features"][:6], data["train_captions"][:6]
    loss, grads = model.loss(features, captions)
    wloss, wgrads = model.loss(features, captions, weights=np.ones(6))
    assert wloss == pytest.approx(loss, rel=1e-12)
    assert all(np.allclose(grads[k], wgrads[k], rtol=1e-10, atol=1e-14) for k in grads)


def test_weights_of_the_wrong_shape_are_refused():
    data = random_data()
    model = _model(data, "lstm", {})
    with pytest.raises(ValueError, match=r"weights must have shape \(4,\)"):
        model.loss(data["train_features"][:4], data["train_captions"][:4], weights=np.ones(3))


class _FixedRewards:
    """A scorer whose reward is the number of distinct words of the caption, so the test
    knows every reward without CIDEr-D."""

    def score_ids(self, captions, image_idxs):
        assert len(captions) == len(image_idxs)
        return np.array([len(set(c[c > 3])) for c in captions], dtype=np.float64)


@pytest.mark.parametrize("baseline", ["greedy", "mean"])
@pytest.mark.parametrize("cell, extra", [FAMILIES[1], FAMILIES[3]])
def test_scst_loss_is_minus_advantage_times_log_probability(cell, extra, baseline):
    data = random_data()
    model = _model(data, cell, extra)
    features, idxs = data["train_features"][:4], np.arange(4)
    K = 3
    objective = SelfCritical(_FixedRewards(), samples=K, baseline=baseline, max_length=10)
    loss, grads, stats = objective.batch_loss(model, idxs, np.random.default_rng(7), features=features)
    sampled = decoding.temperature_sample(model, np.repeat(features, K, axis=0), max_length=10, temperature=1.0,
                                          rng=np.random.default_rng(7))
    rewards = _FixedRewards().score_ids(sampled, np.repeat(idxs, K))
    if baseline == "greedy":
        base = np.repeat(_FixedRewards().score_ids(decoding.greedy(model, features, 10), idxs), K)
    else:
        r = rewards.reshape(4, K)
        base = ((r.sum(1, keepdims=True) - r) / (K - 1)).ravel()
        assert np.allclose((rewards - base).reshape(4, K).sum(1), 0)  # the mean baseline centres each image
    # log p of each sample under the teacher-forced softmax, <END> included: minus its loss alone
    captions = np.concatenate([np.full((4 * K, 1), data["word_to_idx"]["<START>"]), sampled], axis=1)
    logp = np.array([-model.loss(features[i // K][None], captions[i][None])[0] for i in range(4 * K)])
    assert loss == pytest.approx(-np.sum((rewards - base) * logp) / (4 * K), rel=1e-9)
    assert stats["reward"] == pytest.approx(rewards.mean())
    assert stats["advantage_std"] == pytest.approx((rewards - base).std())
    assert 0 <= stats["ended"] <= 1


def test_scst_options_are_checked():
    with pytest.raises(ValueError, match="scst_baseline"):
        SelfCritical(_FixedRewards(), baseline="best")
    with pytest.raises(ValueError, match="scst_samples must be an integer >= 2 with the mean baseline"):
        SelfCritical(_FixedRewards(), samples=1, baseline="mean")


class _NaNRewards(_FixedRewards):
    def score_ids(self, captions, image_idxs):
        r = super().score_ids(captions, image_idxs)
        r[1] = np.nan
        return r


def test_a_nan_reward_stops_training_with_one_line():
    data = random_data()
    model = _model(data, "lstm", {}, dtype=np.float32)
    solver = CaptioningSolver(model, data, batch_size=4, num_epochs=1, seed=0, verbose=False,
                              objective=SelfCritical(_NaNRewards(), samples=2, max_length=8))
    with pytest.raises(TrainingError, match=r"iteration 1: non-finite CIDEr-D reward for 1 sampled captions"):
        solver.train()


def test_scst_epochs_run_over_images_and_record_statistics():
    data = random_data()  # 20 images with 2 captions each
    model = _model(data, "gru", {}, dtype=np.float32)
    solver = CaptioningSolver(model, data, update_rule="adam", optim_config={"learning_rate": 1e-3}, batch_size=5,
                              num_epochs=2, seed=0, verbose=False,
                              objective=SelfCritical(_FixedRewards(), samples=3, baseline="mean", max_length=8))
    solver.train()
    assert solver.iteration == 8  # 20 images / 5 per batch, two epochs
    assert len(solver.stats_history) == 8 and set(solver.stats_history[0]) == {
        "reward", "advantage_std", "ended", "baseline_reward"}


# --- `capmodel train --objective scst --init-from MODEL`: the command users run

SMALL = ["--cell-type", "lstm", "--hidden-dim", "32", "--wordvec-dim", "16", "--seed", "2", "--print-every", "1"]


def _cli(*argv):
    return [sys.executable, "-m", "capmodel.app.cli", *map(str, argv)]


def _params(out):
    with np.load(out / "model.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def xe_model(shapes_dir, tmp_path_factory):
    """A cross-entropy LSTM on the small shapes data, the start of fine-tuning."""
    out = tmp_path_factory.mktemp("xe") / "lstm"
    subprocess.run(_cli("train", "--data", shapes_dir, "--out-dir", out, *SMALL, "--num-epochs", "6",
                        "--batch-size", "25", "--learning-rate", "0.01"), check=True, capture_output=True)
    return out


def _scst(shapes_dir, start, out, *extra):
    return _cli("train", "--data", shapes_dir, "--out-dir", out, "--init-from", start, *SMALL, "--objective",
                "scst", "--scst-samples", "3", "--batch-size", "4", "--learning-rate", "0.0005", "--val-metric",
                "cider", "--val-metric-images", "12", *extra)


def test_scst_training_starts_from_the_model_and_records_rewards(shapes_dir, xe_model, tmp_path):
    out = tmp_path / "scst"
    done = subprocess.run(_scst(shapes_dir, xe_model, out, "--num-epochs", "1"), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    history = (out / "history.csv").read_text().splitlines()
    assert history[0] == "iteration,epoch,loss,learning_rate,reward,advantage_std,ended,baseline_reward"
    assert len(history) == 1 + 15  # 60 training images / 4 per batch
    assert "reward: " in done.stdout and "ended: " in done.stdout
    val = (out / "val.csv").read_text().splitlines()
    assert val[1].startswith("0,0,") and ",cider," in val[1]  # the start, validated before any update
    start = _params(xe_model)
    # epoch 0 is the starting model: the kept model is it or a better epoch, never worse
    kept_epoch0 = val[1].endswith(",1") and not any(r.endswith(",1") for r in val[2:])
    assert kept_epoch0 == all(np.array_equal(start[k], v) for k, v in _params(out).items())
    meta = json.loads((out / "model.json").read_text())
    assert meta["init_from"]["sha256"] == hashlib.sha256((xe_model / "model.npz").read_bytes()).hexdigest()
    # the fine-tuned model keeps the data set's encoder record too (tests/test_selfcontained.py)
    assert meta["encoder"] == json.loads((xe_model / "model.json").read_text())["encoder"] is not None
    assert (out / feat.MODEL_RECORD_FILE).read_text() == (xe_model / feat.MODEL_RECORD_FILE).read_text()


@pytest.mark.slow
def test_scst_job_killed_twice_resumes_to_identical_parameters(shapes_dir, xe_model, tmp_path):
    """Two SIGKILLs, each after a new checkpoint appeared; the sampling generator is in the
    checkpoints, so the resumed run equals the uninterrupted one bit for bit."""
    args = ("--num-epochs", "4", "--checkpoint-every", "3")
    ref = tmp_path / "ref"
    subprocess.run(_scst(shapes_dir, xe_model, ref, *args), check=True, capture_output=True)
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"
    for kill in range(2):
        proc = subprocess.Popen(_scst(shapes_dir, xe_model, out, *args, "--checkpoint-dir", ckpt),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seen = len(list(ckpt.glob("ckpt-*.json"))) if ckpt.exists() else 0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            newest = max((int(p.stem.split("-")[1]) for p in ckpt.glob("ckpt-*.json")), default=0)
            if newest > 3 * (kill + 1) + seen:  # a checkpoint past the last kill's
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert not (out / "model.npz").exists()
    done = subprocess.run(_scst(shapes_dir, xe_model, out, *args, "--checkpoint-dir", ckpt), capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert "resum" in done.stdout.lower()
    a, b = _params(ref), _params(out)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert (ref / "history.csv").read_text() == (out / "history.csv").read_text()
    assert (ref / "val.csv").read_text() == (out / "val.csv").read_text()


@pytest.mark.parametrize("argv, message", [
    (["--hidden-dim", "48"], r"--init-from .*: the model does not match the training settings: hidden_dim 32 "
                             r"\(settings: 48\)"),
    (["--cell-type", "gru"], r"cell_type 'lstm' \(settings: 'gru'\)"),
])
def test_a_start_model_of_other_sizes_is_refused_up_front(shapes_dir, xe_model, tmp_path, capsys, argv, message):
    from capmodel.app.cli import main

    assert main(["train", "--data", str(shapes_dir), "--out-dir", str(tmp_path / "o"), "--init-from",
                 str(xe_model), *SMALL, *argv, "--objective", "scst"]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(message, err), err
    assert not (tmp_path / "o").exists()


def test_scst_without_a_start_model_is_refused(shapes_dir, tmp_path, capsys):
    from capmodel.app.cli import main

    assert main(["train", "--data", str(shapes_dir), "--out-dir", str(tmp_path / "o"), *SMALL,
                 "--objective", "scst"]) != 0
    assert "objective scst fine-tunes a trained model: give it with --init-from MODEL" in capsys.readouterr().err


def test_a_collapsing_run_stops_with_one_line_and_writes_no_model(shapes_dir, xe_model, tmp_path, capsys):
    from capmodel.app.cli import main

    out = tmp_path / "o"
    code = main(["train", "--data", str(shapes_dir), "--out-dir", str(out), "--init-from", str(xe_model), *SMALL,
                 "--objective", "scst", "--scst-samples", "2", "--batch-size", "20", "--learning-rate", "5",
                 "--update-rule", "sgd", "--grad-clip", "1000", "--val-metric", "cider", "--val-metric-images", "12",
                 "--num-epochs", "3"])
    err = capsys.readouterr().err
    assert code != 0 and err.count("\n") == 1, err
    assert re.search(r"validation cider collapsed from [0-9.]+ to [0-9.]+|non-finite", err), err
    assert not out.exists()


# --- the workflow: `scst:` in a model's config entry (the .test config fine-tunes tiny_lstm)

def _snakemake(workdir, config, *args):
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([sys.executable, "-m", "snakemake", "-s", str(root / "workflow" / "Snakefile"),
                           "--directory", str(workdir), "--configfile", str(config), *args],
                          capture_output=True, text=True, env=env, timeout=300)


def test_the_workflow_fine_tunes_the_kept_model_and_summarises_both(workflow_run):
    models = workflow_run / "results" / "models"
    tuned = json.loads((models / "tiny_lstm+scst" / "model.json").read_text())
    assert tuned["settings"]["objective"] == "scst" and tuned["settings"]["val_metric"] == "cider"
    assert tuned["init_from"] == {"path": "results/models/tiny_lstm/model.npz", "sha256": hashlib.sha256(
        (models / "tiny_lstm" / "model.npz").read_bytes()).hexdigest()}
    with open(workflow_run / "results" / "summary.csv") as f:
        rows = {r["model"]: r for r in csv.DictReader(f)}
    assert rows["tiny_lstm"]["objective"] == "xe" and rows["tiny_lstm+scst"]["objective"] == "scst"
    assert float(rows["tiny_lstm+scst"]["CIDEr"]) > 0
    summary = (workflow_run / "reports" / "summary.html").read_text()
    assert 'href="tiny_lstm+scst.html"' in summary and (workflow_run / "reports" / "tiny_lstm+scst.html").exists()


def test_a_change_of_scst_settings_reruns_only_the_fine_tuning(workflow_run, tmp_path):
    root = Path(__file__).resolve().parents[1]
    text = (root / ".test" / "config" / "config.yaml").read_text()
    assert "scst: {num_epochs: 1," in text
    cfg = tmp_path / "config.yaml"
    cfg.write_text(text.replace("scst: {num_epochs: 1,", "scst: {num_epochs: 2,"))
    r = _snakemake(workflow_run, cfg, "-n", "--quiet", "rules")
    assert r.returncode == 0, r.stderr
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", r.stdout, flags=re.M))
    assert jobs.get("finetune_model") == "1" and "train_model" not in jobs, r.stdout
    assert jobs.get("model_settings") == "1" and jobs.get("sample_captions") == "1", r.stdout


def test_scst_is_validated_by_cider(shapes_dir, tmp_path, capsys):
    from capmodel.app import settings as S
    from capmodel.app.cli import main

    assert S.check_train({"objective": "scst"})["val_metric"] == "cider"  # unset: CIDEr-D
    assert S.check_train({"objective": "xe"})["val_metric"] is None
    assert main(["train", "--data", str(shapes_dir), "--out-dir", str(tmp_path / "o"), *SMALL, "--objective", "scst",
                 "--val-metric", "bleu4"]) != 0
    assert "settings.val_metric must be cider (or unset) with objective scst, got 'bleu4'" in capsys.readouterr().err


def test_a_run_stopped_inside_an_epoch_validates_what_it_trained(shapes_dir, xe_model, tmp_path):
    """max_iterations ends the run before an epoch ends: the last updates are validated and
    compete with the start instead of being thrown away for it."""
    out = tmp_path / "o"
    done = subprocess.run(_scst(shapes_dir, xe_model, out, "--max-iterations", "5"), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    val = [line.split(",") for line in (out / "val.csv").read_text().splitlines()[1:]]
    assert [(r[0], r[1]) for r in val] == [("0", "0"), ("0", "5")]
    trained = val[1][-1] == "1"
    assert trained != all(np.array_equal(v, _params(xe_model)[k]) for k, v in _params(out).items())


def test_the_start_model_is_never_the_output(xe_model, shapes_dir, tmp_path, capsys):
    from capmodel.app.cli import main

    before = (xe_model / "model.npz").read_bytes()
    assert main(["train", "--data", str(shapes_dir), "--out-dir", str(xe_model), "--init-from",
                 str(xe_model / "model.json"), *SMALL, "--objective", "scst"]) != 0
    assert "holds the --init-from model, which training would overwrite; choose another --out-dir" in \
        capsys.readouterr().err
    assert (xe_model / "model.npz").read_bytes() == before


def test_a_start_with_non_finite_weights_is_refused(xe_model, shapes_dir, tmp_path, capsys):
    from capmodel import checkpoints
    from capmodel.app.cli import main

    model, meta = checkpoints.load_model(xe_model / "model")
    model.params["Wh"][0, 0] = np.nan
    checkpoints.save_model(tmp_path / "bad" / "model", model, extra={k: v for k, v in meta.items() if k != "model"})
    assert main(["train", "--data", str(shapes_dir), "--out-dir", str(tmp_path / "o"), "--init-from",
                 str(tmp_path / "bad"), *SMALL, "--objective", "scst"]) != 0
    assert "parameter Wh has 1 non-finite values" in capsys.readouterr().err


def test_a_cross_entropy_run_is_resumed_whatever_the_unused_scst_settings(shapes_dir, tmp_path):
    """The checkpoints' fingerprint leaves out settings a run does not use, so checkpoints
    written before self-critical training existed (and a changed --scst-samples) resume."""
    from capmodel.app import pipeline
    from capmodel.app import settings as S

    s = S.check_train({"cell_type": "lstm"})
    data = {"sha256": "cd", "encoder": None}
    fingerprint = pipeline.run_fingerprint(data, s, None)
    assert {"objective", "scst_samples", "scst_baseline"}.isdisjoint(fingerprint["settings"])
    assert "init_from_sha256" not in fingerprint and fingerprint["settings"]["hidden_dim"] == s["hidden_dim"]
    tuned = pipeline.run_fingerprint(data, S.check_train({"objective": "scst"}), "ab")
    assert tuned["settings"]["scst_samples"] == 5 and tuned["init_from_sha256"] == "ab"
    ckpt = tmp_path / "ckpt"
    pipeline.train(shapes_dir, tmp_path / "a", {**s, "max_iterations": 2}, checkpoint_dir=ckpt, keep_checkpoints=True,
                   verbose=False)
    pipeline.train(shapes_dir, tmp_path / "b", {**s, "max_iterations": 2, "scst_samples": 9}, checkpoint_dir=ckpt,
                   verbose=False)  # resumed from the last checkpoint, not refused
    a, b = _params(tmp_path / "a"), _params(tmp_path / "b")
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_changed_settings_restart_the_checkpoints_only_when_asked(shapes_dir, xe_model, tmp_path, capsys):
    from capmodel.app.cli import main

    args = ["train", "--data", str(shapes_dir), "--init-from", str(xe_model), *SMALL, "--objective", "scst",
            "--scst-samples", "2", "--batch-size", "20", "--checkpoint-dir", str(tmp_path / "ckpt"),
            "--keep-checkpoints", "--max-iterations", "2"]
    assert main([*args, "--out-dir", str(tmp_path / "a")]) == 0
    assert main([*args, "--out-dir", str(tmp_path / "b"), "--learning-rate", "0.002"]) != 0
    assert "belongs to a run with other settings (learning_rate differ)" in capsys.readouterr().err
    assert main([*args, "--out-dir", str(tmp_path / "b"), "--learning-rate", "0.002", "--restart-on-change"]) == 0
    assert "other settings (learning_rate differ): starting over" in capsys.readouterr().out
    assert main([*args, "--out-dir", str(tmp_path / "c"), "--learning-rate", "0.002"]) == 0  # now the same run


@pytest.mark.parametrize("argv, message", [
    (["--objective", "scst", "--scst-samples", "100000", "--batch-size", "100"],
     r"--scst-samples 100000 with --batch-size 100: one training step over 10000000 sampled captions needs about "
     r"[0-9.]+ GB, more than the [0-9.]+ GB of memory available; at most \d+ samples per image fit with "
     r"--batch-size 100$"),
    (["--batch-size", "1000000000"], r"--batch-size 1000000000: one training step over 1000000000 captions needs "
                                     r"about [0-9.]+ GB, more than the [0-9.]+ GB of memory available; at most "
                                     r"\d+ captions per batch fit$"),
    (["--max-train", "100000000000"], r"--max-train 100000000000: the subsampled captions need about [0-9.]+ GB"),
])
def test_sizes_beyond_memory_are_refused_before_training(shapes_dir, xe_model, tmp_path, capsys, argv, message):
    """The kernel's OOM killer would end such a run without a word (--scst-samples 100000
    was killed at 23.7 GB): the estimate of one step refuses it in one line up front."""
    from capmodel.app.cli import main

    start = time.monotonic()
    assert main(["train", "--data", str(shapes_dir), "--out-dir", str(tmp_path / "o"), "--init-from", str(xe_model),
                 *SMALL, "--val-metric-images", "12", *argv]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search("^capmodel train: error: " + message, err), err
    assert time.monotonic() - start < 30 and not (tmp_path / "o").exists()


def test_the_memory_estimate_allows_what_fits():
    from capmodel.app import memory
    from capmodel.objectives import CrossEntropy

    data = random_data()
    model = _model(data, "lstm", {}, dtype=np.float32)
    per_row = memory.bytes_per_row(model, data["train_captions"].shape[1] - 1)
    scst = SelfCritical(_FixedRewards(), samples=5)
    memory.check_training(model, data, {"batch_size": 10}, scst, available=50 * per_row)
    with pytest.raises(ValueError, match=r"at most 4 samples per image fit with --batch-size 10$"):
        memory.check_training(model, data, {"batch_size": 10}, scst, available=49 * per_row)
    memory.check_training(model, data, {"batch_size": 10}, CrossEntropy(), available=10 * per_row)
    with pytest.raises(ValueError, match=r"at most 9 captions per batch fit$"):
        memory.check_training(model, data, {"batch_size": 10}, CrossEntropy(), available=9.5 * per_row)


def test_running_out_of_memory_is_one_line(monkeypatch, tmp_path, capsys):
    """What no estimate foresaw: a MemoryError is one line with the settings to lower."""
    from capmodel.app import pipeline
    from capmodel.app.cli import main

    def no_memory(*args, **kwargs):
        raise MemoryError("Unable to allocate 9.3 GiB")

    monkeypatch.setattr(pipeline, "train", no_memory)
    assert main(["train", "--data", str(tmp_path), "--out-dir", str(tmp_path / "o")]) != 0
    err = capsys.readouterr().err
    assert err == ("capmodel train: error: out of memory (Unable to allocate 9.3 GiB); make --batch-size (and "
                   "--scst-samples with --objective scst) smaller\n")

def test_self_critical_training_has_its_own_defaults(shapes_dir, xe_model, tmp_path):
    """`train --init-from A --objective scst` with no other flag fine-tunes with the
    workflow's scst: defaults (learning rate 5e-4, 2 epochs), not cross-entropy's 5e-3."""
    from capmodel.app import settings as S
    from capmodel.app.cli import build_parser

    scst = S.defaults(S.SCST)
    s = S.check_train({"objective": "scst"})
    assert (s["learning_rate"], s["num_epochs"]) == (scst["learning_rate"], scst["num_epochs"]) == (5e-4, 2)
    assert S.check_train({"objective": "scst", "learning_rate": 0.01, "num_epochs": 3})["learning_rate"] == 0.01
    assert (S.check_train({})["learning_rate"], S.check_train({})["num_epochs"]) == (5e-3, 10)
    parser = build_parser()
    train = next(a for a in parser._subparsers._group_actions[0].choices["train"]._actions
                 if a.dest == "learning_rate")
    assert train.help.endswith("default 0.005, 0.002 with --cell-type transformer, 0.0005 with --objective scst)")
    out = tmp_path / "o"
    done = subprocess.run(_cli("train", "--data", shapes_dir, "--out-dir", out, "--init-from", xe_model, *SMALL,
                               "--objective", "scst", "--val-metric-images", "12"), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    settings = json.loads((out / "model.json").read_text())["settings"]
    assert (settings["learning_rate"], settings["num_epochs"]) == (5e-4, 2)


def test_rewards_without_signal_stop_the_run_with_one_line(shapes_dir, tmp_path, capsys):
    """One training image: every CIDEr-D reward is 0 (each n-gram is in every reference
    set), so every advantage is 0 and SCST cannot change the model."""
    from capmodel.app.cli import main
    from capmodel.datasets import shapes

    data = tmp_path / "one"
    shapes.generate(data, num_train=1, num_val=6, seed=3)
    start = tmp_path / "a"
    assert main(["train", "--data", str(data), "--out-dir", str(start), *SMALL, "--num-epochs", "2"]) == 0
    capsys.readouterr()
    out = tmp_path / "o"
    assert main(["train", "--data", str(data), "--out-dir", str(out), "--init-from", str(start), *SMALL,
                 "--objective", "scst", "--batch-size", "4", "--scst-samples", "3"]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("capmodel train: error: epoch 1: every gradient of the epoch was exactly 0") and \
        "the rewards carry no signal" in err, err
    assert not out.exists()


def test_zero_advantages_stop_the_solver():
    class Flat(_FixedRewards):
        def score_ids(self, captions, image_idxs):
            return np.zeros(len(captions))

    data = random_data()
    model = _model(data, "lstm", {}, dtype=np.float32)
    solver = CaptioningSolver(model, data, batch_size=5, num_epochs=2, seed=0, verbose=False,
                              objective=SelfCritical(Flat(), samples=2, baseline="mean", max_length=8))
    with pytest.raises(TrainingError, match=r"^epoch 1: .*every advantage 0\), so the rewards carry no signal"):
        solver.train()
    assert solver.iteration == 4
