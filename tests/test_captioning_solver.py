"""Tests of capmodel.captioning_solver: CS231n behaviour, overfitting, and the opt-in controls."""

import numpy as np
import pytest

from capmodel.captioning_solver import CaptioningSolver, TrainingError
from capmodel.classifiers.rnn import CaptioningRNN
from capmodel.coco_utils import decode_captions
from synthetic import random_data as make_data


class Recorder:
    """The smallest model the solver accepts: it records every loss() call."""

    def __init__(self, grad=1.0, loss_values=None):
        self.params = {"w": np.zeros(3)}
        self.calls = []
        self.grad = grad
        self.loss_values = loss_values

    def loss(self, features, captions):
        self.calls.append((features.copy(), captions.copy()))
        loss = 1.0 if self.loss_values is None else self.loss_values[len(self.calls) - 1]
        return loss, {"w": np.full(3, self.grad)}

    def sample(self, features, max_length=30):
        return np.zeros((len(features), max_length), dtype=int)


@pytest.mark.slow
@pytest.mark.parametrize("cell_type, lr_decay, limit", [("rnn", 0.95, 0.1), ("lstm", 0.995, 0.5), ("gru", 0.995, 0.5)])
def test_overfits_50_examples_and_samples_them_back(cell_type, lr_decay, limit):
    """The course's check: 50 captions, H=512, W=256, Adam 5e-3, 50 epochs of batch 25."""
    data = make_data(num_images=50, captions_per_image=1, D=64, num_words=30, seed=1)
    np.random.seed(231)
    model = CaptioningRNN(data["word_to_idx"], input_dim=64, wordvec_dim=256, hidden_dim=512,
                          cell_type=cell_type, seed=0)
    solver = CaptioningSolver(model, data, update_rule="adam", num_epochs=50, batch_size=25,
                              optim_config={"learning_rate": 5e-3}, lr_decay=lr_decay, verbose=False)
    solver.train()
    assert len(solver.loss_history) == 100
    assert solver.loss_history[-1] < limit
    features = data["train_features"][data["train_image_idxs"]]
    generated = decode_captions(model.sample(features, max_length=16), data["idx_to_word"], strip_special=True)
    reference = decode_captions(data["train_captions"], data["idx_to_word"], strip_special=True)
    assert sum(g == r for g, r in zip(generated, reference)) >= 48


def test_iterations_minibatches_and_decay_are_cs231n(tiny_data):
    model = Recorder()
    np.random.seed(5)
    solver = CaptioningSolver(model, tiny_data, update_rule="sgd", optim_config={"learning_rate": 1.0},
                              lr_decay=0.5, batch_size=7, num_epochs=3, verbose=False)
    solver.train()
    num_train = tiny_data["train_captions"].shape[0]  # 40 -> 5 iterations per epoch
    assert len(model.calls) == 3 * (num_train // 7) == len(solver.loss_history)
    # the same global-state draws CS231n's sample_coco_minibatch makes
    np.random.seed(5)
    for features, captions in model.calls:
        mask = np.random.choice(num_train, 7)
        assert np.array_equal(captions, tiny_data["train_captions"][mask])
        assert np.array_equal(features, tiny_data["train_features"][tiny_data["train_image_idxs"][mask]])
    assert solver.optim_configs["w"]["learning_rate"] == 0.5**3
    # sgd with gradient 1: 5 steps at lr 1, 5 at 0.5, 5 at 0.25
    assert np.allclose(model.params["w"], -(5 * 1 + 5 * 0.5 + 5 * 0.25))


def test_at_least_one_iteration_per_epoch(tiny_data):
    model = Recorder()
    CaptioningSolver(model, tiny_data, batch_size=1000, num_epochs=2, verbose=False).train()
    assert len(model.calls) == 2


def test_seed_makes_runs_reproducible(tiny_data):
    runs = []
    for _ in range(2):
        model = Recorder()
        CaptioningSolver(model, tiny_data, batch_size=4, num_epochs=1, seed=11, verbose=False).train()
        runs.append(np.concatenate([c for _, c in model.calls]))
    assert np.array_equal(runs[0], runs[1])


def test_unknown_kwargs_are_named(tiny_data):
    with pytest.raises(ValueError, match="bogus, learningrate"):
        CaptioningSolver(Recorder(), tiny_data, learningrate=1, bogus=2)
    with pytest.raises(ValueError, match='Invalid update_rule "adamw"'):
        CaptioningSolver(Recorder(), tiny_data, update_rule="adamw")


def test_grad_clip_bounds_the_update(tiny_data):
    model = Recorder(grad=100.0)
    CaptioningSolver(model, tiny_data, update_rule="sgd", optim_config={"learning_rate": 1.0},
                     grad_clip=1.0, batch_size=40, num_epochs=1, verbose=False).train()
    assert np.linalg.norm(model.params["w"]) == pytest.approx(1.0)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_loss_stops_with_iteration(tiny_data, bad):
    model = Recorder(loss_values=[1.0, 1.0, bad, 1.0])
    with pytest.raises(TrainingError, match="non-finite loss at iteration 3"):
        CaptioningSolver(model, tiny_data, batch_size=10, num_epochs=1, verbose=False).train()


def test_prints_cs231n_progress(tiny_data, capsys):
    CaptioningSolver(Recorder(), tiny_data, batch_size=10, num_epochs=1, print_every=2).train()
    out = capsys.readouterr().out
    assert "(Iteration 1 / 4) loss: 1.000000" in out and "(Iteration 3 / 4)" in out


def test_progress_bar_when_verbose(tiny_data, capsys):
    CaptioningSolver(Recorder(), tiny_data, batch_size=10, num_epochs=1, progress=True).train()
    captured = capsys.readouterr()
    assert "4/4" in captured.err and "loss=1.000" in captured.err  # tqdm writes to stderr
    assert "(Iteration" not in captured.out
    CaptioningSolver(Recorder(), tiny_data, batch_size=10, num_epochs=1, progress=True, verbose=False).train()
    assert capsys.readouterr().err == ""
