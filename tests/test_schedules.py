"""Tests of capmodel.schedules: learning rates at given iterations."""

import math

import pytest

from capmodel.schedules import learning_rate


@pytest.mark.parametrize("schedule, t, kwargs, expected", [
    ("constant", 123, {}, 0.1),
    ("exponential", 0, {"iterations_per_epoch": 10, "lr_decay": 0.5}, 0.1),
    ("exponential", 25, {"iterations_per_epoch": 10, "lr_decay": 0.5}, 0.025),
    ("step", 29, {"iterations_per_epoch": 10, "step_size": 2, "gamma": 0.1}, 0.01),
    ("step", 40, {"iterations_per_epoch": 10, "step_size": 2, "gamma": 0.1}, 0.001),
    ("cosine", 0, {"num_iterations": 100}, 0.1),
    ("cosine", 50, {"num_iterations": 100}, 0.05),
    ("cosine", 100, {"num_iterations": 100, "min_lr": 0.01}, 0.01),
    ("cosine", 25, {"num_iterations": 100}, 0.05 * (1 + math.cos(math.pi / 4))),
    ("constant", 0, {"warmup_iterations": 4}, 0.025),
    ("constant", 3, {"warmup_iterations": 4}, 0.1),
    ("cosine", 10, {"num_iterations": 110, "warmup_iterations": 10}, 0.1),
])
def test_values(schedule, t, kwargs, expected):
    assert learning_rate(t, 0.1, schedule, **kwargs) == pytest.approx(expected)


def test_unknown_schedule():
    with pytest.raises(ValueError, match='unknown lr_schedule "linear"'):
        learning_rate(0, 0.1, "linear")
