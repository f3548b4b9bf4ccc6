"""Shared fixtures."""

import pytest

from capmodel.datasets.synthetic import random_data


@pytest.fixture
def tiny_data():
    """20 train / 6 val images with two random captions each, 16-d features."""
    return random_data()
