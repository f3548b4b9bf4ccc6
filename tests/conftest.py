"""Shared fixtures."""

import pytest

from capmodel.datasets.synthetic import random_data


@pytest.fixture
def tiny_data():
    """20 train / 6 val images with two random captions each, 16-d features."""
    return random_data()


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory):
    """A small shapes dataset on disk (generated once per test session)."""
    from capmodel.datasets import shapes

    out = tmp_path_factory.mktemp("data") / "shapes"
    shapes.generate(out, num_train=60, num_val=12, seed=3)
    return out
