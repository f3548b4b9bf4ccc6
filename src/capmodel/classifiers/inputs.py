"""Input checks shared by every captioning model: image features and caption ids.

Dimension letters: N minibatch, T caption length (inputs), D image feature dimension,
V vocabulary size.
"""

import numpy as np


def check_features(features, D, dtype):
    """features as an (N, D) array of dtype; ValueError naming the shape otherwise."""
    features = np.asarray(features)
    if features.ndim != 2 or features.shape[1] != D:
        raise ValueError(f"features must have shape (N, {D}), got {features.shape}")
    return features.astype(dtype, copy=False)


def check_captions(captions, N, V, max_length=None):
    """captions as an (N, T + 1) integer array of ids in [0, V), T >= 1 (and T <= max_length
    when given); ValueError naming the problem otherwise."""
    captions = np.asarray(captions)
    if captions.ndim != 2 or captions.shape[0] != N or captions.shape[1] < 2:
        raise ValueError(f"captions must have shape (N={N}, T+1) with T >= 1, got {captions.shape}")
    if max_length is not None and captions.shape[1] - 1 > max_length:
        raise ValueError(f"captions of shape {captions.shape} have T={captions.shape[1] - 1} input words, more than "
                         f"the model's max_length={max_length}")
    if not np.issubdtype(captions.dtype, np.integer):
        raise ValueError(f"captions must be integer word ids, got dtype {captions.dtype}")
    if captions.min() < 0 or captions.max() >= V:
        raise ValueError(f"captions contain word ids outside the vocabulary [0, {V}): "
                         f"min {captions.min()}, max {captions.max()}")
    return captions


def check_weights(weights, N, dtype):
    """Per-caption loss weights as an (N,) finite array of dtype, or None when not given;
    ValueError naming the problem otherwise."""
    if weights is None:
        return None
    weights = np.asarray(weights, dtype=dtype)
    if weights.shape != (N,):
        raise ValueError(f"weights must have shape ({N},), one per caption, got {weights.shape}")
    if not np.all(np.isfinite(weights)):
        raise ValueError(f"weights must be finite, got {np.count_nonzero(~np.isfinite(weights))} non-finite values")
    return weights
