"""Tests of capmodel.optim: the CS231n reference values and dtype preservation."""

import numpy as np
import pytest

from capmodel import optim
from capmodel.gradient_check import rel_error


def _wdvm(N=4, D=5):
    w = np.linspace(-0.4, 0.6, num=N * D).reshape(N, D)
    dw = np.linspace(-0.6, 0.4, num=N * D).reshape(N, D)
    return w, dw


def _adam_reference(w, dw, m, v, t, lr=1e-2, b1=0.9, b2=0.999, eps=1e-8):
    m = b1 * m + (1 - b1) * dw
    v = b2 * v + (1 - b2) * dw**2
    t = t + 1
    return w - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps), m, v


def test_sgd_momentum_matches_cs231n():
    w, dw = _wdvm()
    v = np.linspace(0.6, 0.9, num=20).reshape(4, 5)
    next_w, config = optim.sgd_momentum(w, dw, {"learning_rate": 1e-3, "velocity": v})
    expected_next_w = np.asarray([
        [0.1406, 0.20738947, 0.27417895, 0.34096842, 0.40775789],
        [0.47454737, 0.54133684, 0.60812632, 0.67491579, 0.74170526],
        [0.80849474, 0.87528421, 0.94207368, 1.00886316, 1.07565263],
        [1.14244211, 1.20923158, 1.27602105, 1.34281053, 1.4096]])
    expected_velocity = np.asarray([
        [0.5406, 0.55475789, 0.56891579, 0.58307368, 0.59723158],
        [0.61138947, 0.62554737, 0.63970526, 0.65386316, 0.66802105],
        [0.68217895, 0.69633684, 0.71049474, 0.72465263, 0.73881053],
        [0.75296842, 0.76712632, 0.78128421, 0.79544211, 0.8096]])
    assert rel_error(next_w, expected_next_w) < 1e-8
    assert rel_error(config["velocity"], expected_velocity) < 1e-8


def test_rmsprop_matches_cs231n():
    w, dw = _wdvm()
    cache = np.linspace(0.6, 0.9, num=20).reshape(4, 5)
    next_w, config = optim.rmsprop(w, dw, {"learning_rate": 1e-2, "cache": cache})
    expected_next_w = np.asarray([
        [-0.39223849, -0.34037513, -0.28849239, -0.23659121, -0.18467247],
        [-0.132737, -0.08078555, -0.02881884, 0.02316247, 0.07515774],
        [0.12716641, 0.17918792, 0.23122175, 0.28326742, 0.33532447],
        [0.38739248, 0.43947102, 0.49155973, 0.54365823, 0.59576619]])
    expected_cache = np.asarray([
        [0.5976, 0.6126277, 0.6277108, 0.64284931, 0.65804321],
        [0.67329252, 0.68859723, 0.70395734, 0.71937285, 0.73484377],
        [0.75037008, 0.7659518, 0.78158892, 0.79728144, 0.81302936],
        [0.82883269, 0.84469141, 0.86060554, 0.87657507, 0.8926]])
    assert rel_error(next_w, expected_next_w) < 1e-7
    assert rel_error(config["cache"], expected_cache) < 1e-7


def test_adam_matches_cs231n_and_reference():
    w, dw = _wdvm()
    m = np.linspace(0.6, 0.9, num=20).reshape(4, 5)
    v = np.linspace(0.7, 0.5, num=20).reshape(4, 5)
    exp_w, exp_m, exp_v = _adam_reference(w.copy(), dw, m.copy(), v.copy(), 5)
    next_w, config = optim.adam(w, dw, {"learning_rate": 1e-2, "m": m, "v": v, "t": 5})
    expected_next_w = np.asarray([
        [-0.40094747, -0.34836187, -0.29577703, -0.24319299, -0.19060977],
        [-0.1380274, -0.08544591, -0.03286534, 0.01971428, 0.0722929],
        [0.1248705, 0.17744702, 0.23002243, 0.28259667, 0.33516969],
        [0.38774145, 0.44031188, 0.49288093, 0.54544852, 0.59801459]])
    assert rel_error(next_w, expected_next_w) < 1e-6  # CS231n prints 8 decimals
    assert rel_error(next_w, exp_w) < 1e-12
    assert rel_error(config["m"], exp_m) < 1e-12 and rel_error(config["v"], exp_v) < 1e-12
    assert config["t"] == 6


def test_adam_defaults_are_cs231n():
    _, config = optim.adam(np.zeros(3), np.ones(3))
    assert (config["learning_rate"], config["beta1"], config["beta2"], config["epsilon"], config["t"]) == \
        (1e-3, 0.9, 0.999, 1e-8, 1)


@pytest.mark.parametrize("rule", sorted(optim.RULES))
def test_rules_keep_float32(rule):
    w = np.ones((3, 4), dtype=np.float32)
    config = None
    for _ in range(3):
        w, config = optim.RULES[rule](w, np.full((3, 4), 0.5, dtype=np.float32), config)
    assert w.dtype == np.float32
    assert all(v.dtype == np.float32 for v in config.values() if isinstance(v, np.ndarray))
    assert np.all(w < 1)  # a positive gradient moves the weights down
