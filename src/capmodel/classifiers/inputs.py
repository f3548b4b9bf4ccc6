"""Input checks shared by every captioning model: image features, region features,
caption ids and loss weights.

Dimension letters: N minibatch, T caption length (inputs), D image feature dimension (the
channels of the regions where they are meant), L image regions, V vocabulary size.
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


ATTENTION_CHOICES = ("none", "soft")
# Weight of the doubly stochastic attention penalty when none is given: off (docs/library.md,
# "Does attention pay": any weight above 0 measured worse on the shapes data).
ATTENTION_PENALTY = 0.0


def check_attention(attention, region_dim):
    """The attention kind and region_dim of a model's constructor, checked: region_dim as
    an int (None without attention); ValueError naming the problem otherwise."""
    if attention not in ATTENTION_CHOICES:
        raise ValueError(f'attention must be one of {", ".join(ATTENTION_CHOICES)}, got "{attention}"')
    if attention == "none":
        if region_dim is not None:
            raise ValueError(f"region_dim={region_dim} is given but attention is none: a model without "
                             "attention takes no regions")
        return None
    if region_dim is None or int(region_dim) != region_dim or region_dim < 1:
        raise ValueError(f"attention {attention} needs region_dim, the channels C of the regions (a positive "
                         f"integer), got {region_dim}")
    return int(region_dim)


def check_num_regions(num_regions, attention):
    """num_regions of a model's constructor (L when its regions carry their place in the
    grid, None when they are a set) as an int or None; ValueError naming the problem."""
    if num_regions is None:
        return None
    if attention == "none":
        raise ValueError(f"num_regions={num_regions} is given but attention is none: a model without attention "
                         "takes no regions")
    if isinstance(num_regions, bool) or int(num_regions) != num_regions or num_regions < 1:
        raise ValueError(f"num_regions must be a positive integer (the regions of the grid) or None, "
                         f"got {num_regions!r}")
    return int(num_regions)


def check_regions(regions, N, D, dtype, uses, L=None):
    """regions as an (N, L, D) array of dtype when the model uses them (uses), None when
    it does not; ValueError naming the shape or what is missing otherwise.

    Inputs:
    - regions: Region features of shape (N, L, D), any float dtype, or None
    - N: Minibatch size (rows of the features)
    - D: Channels the model's regions have (its region_dim); None when it takes none
    - dtype: The model's dtype
    - uses: Whether the model attends over regions
    - L: The number of regions the model takes (the grid it knows), or None for any
    """
    if not uses:
        if regions is not None:
            raise ValueError(f"this model does not attend over image regions (attention none), but regions of "
                             f"shape {np.shape(regions)} were given")
        return None
    if regions is None:
        raise ValueError(f"this model attends over image regions: it needs regions of shape (N={N}, L, {D}) "
                         "beside the features, got none")
    regions = np.asarray(regions)
    if regions.ndim != 3 or regions.shape[0] != N or regions.shape[2] != D or regions.shape[1] < 1:
        raise ValueError(f"regions must have shape (N={N}, L, {D}) with L >= 1, got {regions.shape}")
    if L is not None and regions.shape[1] != L:
        raise ValueError(f"regions must have shape (N={N}, L={L}, {D}): the model learned the places of a grid "
                         f"of {L} regions, got {regions.shape[1]} regions")
    if not np.issubdtype(regions.dtype, np.floating):
        raise ValueError(f"regions must be floating point, got dtype {regions.dtype}")
    return regions.astype(dtype, copy=False)


def check_attend_inputs(model, features, captions, regions):
    """The inputs of model.attend checked and cast: (features (N, D), captions (N, T + 1),
    regions (N, L, C)); a ValueError for a model without attention or a bad shape."""
    if not model.uses_regions:
        raise ValueError("this model does not attend over image regions (attention none): it has no "
                         "attention weights")
    features = model.check_features(features)
    N = features.shape[0]
    return features, model._check_captions(captions, N), model.check_regions(regions, N)
