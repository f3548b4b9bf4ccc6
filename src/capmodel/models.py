"""Model families, registered in one place, and the interface they share.

A model family is a class with:
- ``FAMILY``: its name in model descriptions (and in capmodel.app.gradcheck_suite.FAMILY_CHECKS)
- ``CELL_TYPES``: the values of the ``cell_type`` setting it serves (e.g. rnn, lstm, gru)
- ``SETTINGS``: its own training settings (capmodel.setting_spec.Setting), besides the common ones
- ``DEFAULTS``: {name: value} of common settings whose default differs for it (e.g. a learning rate)
- ``from_settings(word_to_idx, input_dim, settings, dtype)``: a new model from a full
  training settings dict (capmodel.app.settings.train_settings())
- ``describe()``: a JSON-able dict that rebuilds the model's shapes, with ``family`` and
  ``word_to_idx``; ``from_description(desc)``: the model back from it (parameters not set)
- ``params``: dict of name -> array; ``dtype``; ``word_to_idx``; ``input_dim`` (D);
  ``rng`` (np.random.Generator for the initial weights and dropout masks, saved in checkpoints)
- ``loss(features, captions, dropout_rng=None, training=True, weights=None) -> (loss, grads)``:
  features (N, D), captions (N, T + 1); training=False switches dropout off (validation);
  weights (N,) weighs each caption's loss (self-critical training, capmodel.scst)
- ``decoder(features) -> (state, step)``: ``state`` is a tuple of arrays whose first axis
  is the row M (decoders repeat, reorder and concatenate rows); ``step(state, words)``
  with words (M,) returns ``(state, scores)``, scores (M, V) a fresh array
- ``check_features(features)``: features (N, D) as an array of the model's dtype, or a
  ValueError naming the shape that does not fit
- ``sample(features, max_length, method=..., **options)``: capmodel.decoding.decode
A family whose models can attend over image regions also has:
- ``uses_regions``: True for a model that attends; it then takes the regions (N, L, C) as
  ``regions=`` in ``loss``, ``decoder`` and ``sample`` (False, or absent, for any other)
- ``attend(features, captions, regions)``: the attention weights (N, T, L) that each
  position of the captions, read teacher-forced, puts on the L regions

Whatever feeds a model from a data dict (the training objectives, validation, sampling,
the metrics of a split) takes its inputs from ``image_inputs`` below, which adds the
regions for a model that uses them, and passes them as keyword arguments.

The solver, the objectives, validation, decoding and checkpoints use only this interface.
To add a family: write its module and tests, add the class to FAMILIES below and its
gradient checks to capmodel.app.gradcheck_suite.FAMILY_CHECKS.
"""

from capmodel.classifiers.rnn import CaptioningRNN
from capmodel.classifiers.transformer import CaptioningTransformer

FAMILIES = (CaptioningRNN, CaptioningTransformer)


def cell_types():
    """Every cell_type value, in registration order."""
    return tuple(c for fam in FAMILIES for c in fam.CELL_TYPES)


def family_of(cell_type):
    for fam in FAMILIES:
        if cell_type in fam.CELL_TYPES:
            return fam
    raise ValueError(f'unknown cell_type "{cell_type}"; choose one of {", ".join(cell_types())}')


def build(word_to_idx, input_dim, settings, dtype=None, region_dim=None, num_regions=None):
    """A new model for a full training settings dict (region_dim, num_regions: channels C
    and number L of the data set's regions, needed by a model with attention; L is kept
    when the region_positions setting is on)."""
    import numpy as np

    return family_of(settings["cell_type"]).from_settings(word_to_idx, input_dim, settings,
                                                          np.float32 if dtype is None else dtype,
                                                          region_dim=region_dim, num_regions=num_regions)


def from_description(desc):
    """Rebuild a model (shapes, vocabulary, hyper-parameters) from its describe() dict."""
    if not isinstance(desc, dict):
        raise ValueError(f"a model description must be a JSON object, got {type(desc).__name__}")
    family = desc.get("family", "rnn")  # model files without a family hold an RNN: CaptioningRNN reads them
    for fam in FAMILIES:
        if fam.FAMILY == family:
            return fam.from_description(desc)
    raise ValueError(f'unknown model family "{family}"; known: {", ".join(f.FAMILY for f in FAMILIES)}')


def image_inputs(model, data, split, image_idxs):
    """The image inputs of model for some images of a split of a data dict.

    Inputs:
    - model: a model of this interface
    - data: dict in the format of capmodel.coco_utils.load_coco_data
    - split: 'train', 'val' or 'test'
    - image_idxs: Int array of shape (N,), images of the split (repeats allowed)

    Returns a dict of keyword arguments for model.loss, model.decoder and model.sample:
    - features: (N, D), data[split + '_features'] of the images
    - regions: (N, L, C), only when the model uses regions (``uses_regions``)
    """
    inputs = {"features": data[f"{split}_features"][image_idxs]}
    if getattr(model, "uses_regions", False):
        regions = data.get(f"{split}_regions")
        if regions is None:
            raise ValueError(f"the model attends to image regions, but the data set has no {split} regions "
                             f"({split}2014_grid.h5); build the data set with a grid")
        inputs["regions"] = regions[image_idxs]
    return inputs
