"""Model families, registered in one place, and the interface they share.

A model family is a class with:
- ``CELL_TYPES``: the values of the ``cell_type`` setting it serves (e.g. rnn, lstm, gru)
- ``SETTINGS``: its own training settings (capmodel.setting.Setting), besides the common ones
- ``from_settings(word_to_idx, input_dim, settings, dtype)``: a new model from a full
  training settings dict (capmodel.app.settings.train_settings())
- ``describe()``: a JSON-able dict that rebuilds the model's shapes, with ``family`` and
  ``word_to_idx``; ``from_description(desc)``: the model back from it (parameters not set)
- ``params``: dict of name -> array; ``dtype``; ``word_to_idx``; ``rng`` (np.random.Generator
  for the initial weights and dropout masks, saved in checkpoints)
- ``loss(features, captions, dropout_rng=None, training=True) -> (loss, grads)``, features
  (N, D), captions (N, T + 1); training=False switches dropout off (validation)
- ``decoder(features) -> (state, step)``: ``state`` is a tuple of arrays whose first axis
  is the row M (decoders repeat, reorder and concatenate rows); ``step(state, words)``
  with words (M,) returns ``(state, scores)``, scores (M, V) a fresh array
- ``check_features(features)``: features (N, D) as an array of the model's dtype, or a
  ValueError naming the shape that does not fit
- ``sample(features, max_length, method=..., **options)``: capmodel.decoding.decode
- ``gradient_checks(rng)`` (optional): rows for the gradient-check table, see
  capmodel.app.gradcheck_suite

The solver, decoding, the gradient-check suite and checkpoints use only this interface.
To add a family: write its module and tests, and add the class to FAMILIES below.
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


def build(word_to_idx, input_dim, settings, dtype=None, region_dim=None):
    """A new model for a full training settings dict (region_dim: channels of the data
    set's regions, needed by a model with attention)."""
    import numpy as np

    return family_of(settings["cell_type"]).from_settings(word_to_idx, input_dim, settings,
                                                          np.float32 if dtype is None else dtype,
                                                          region_dim=region_dim)


def from_description(desc):
    """Rebuild a model (shapes, vocabulary, hyper-parameters) from its describe() dict."""
    if not isinstance(desc, dict):
        raise ValueError(f"a model description must be a JSON object, got {type(desc).__name__}")
    family = desc.get("family", "rnn")  # files written before families existed are RNNs
    for fam in FAMILIES:
        if fam.FAMILY == family:
            return fam.from_description(desc)
    raise ValueError(f'unknown model family "{family}"; known: {", ".join(f.FAMILY for f in FAMILIES)}')
