"""Training objectives: what the solver minimises, batch by batch.

capmodel.captioning_solver runs one loop for every objective. The objective decides:
- the loss of a batch: ``objective(model, data, batch_size, rng) -> (loss, grads, stats)``
  draws a minibatch from the training split of data (load_coco_data's format), feeds the
  model through capmodel.models.image_inputs and returns the loss, the gradients
  (parallel to model.params) and stats, a dict of floats for the progress lines and
  history.csv (empty for cross-entropy);
- what an epoch iterates over: ``unit`` ('captions' or 'images') and
  ``epoch_size(data)``, their number, so an epoch is max(epoch_size // batch_size, 1)
  iterations;
- how the run is validated and guarded: ``metric``, the validation metric it trains for
  (None: the solver's val_metric or the validation loss); ``fine_tunes``, True when it
  starts from a trained model (the solver then validates the start as epoch 0, so a
  fine-tuning that never improves returns its start); ``divergence_factor`` and
  ``collapse_fraction`` (see the Objective attributes); ``generator_required``, True when
  it cannot draw from the global NumPy random state; ``no_signal``, what it means when a
  whole epoch's gradients are exactly 0 (the solver then stops: training could not change
  the model).

A new objective is one new subclass of Objective. Cross-entropy is CrossEntropy below;
self-critical training is capmodel.scst.SelfCritical.
"""

from capmodel import models
from capmodel.coco_utils import minibatch_rows


class Objective:
    """The defaults of the objective interface; subclasses implement epoch_size and __call__.

    Attributes:
    - unit: what an epoch runs over, 'captions' or 'images'
    - metric: validation metric this objective trains for ('bleu4', 'cider') or None
    - fine_tunes: the objective starts from a trained model
    - divergence_factor: training stops when a loss exceeds this multiple of the first
      iteration's (None: no such check, for losses that may be negative)
    - collapse_fraction: training stops when the validation metric after an epoch falls
      below this fraction of the start's (epoch 0); None: no such check
    - generator_required: minibatches need an np.random.Generator (a solver without a
      seed makes one), where None would mean the global NumPy state
    - no_signal: why every gradient of an epoch can be exactly 0 with this objective,
      for the error that stops such a run
    """

    unit = "captions"
    metric = None
    fine_tunes = False
    divergence_factor = None
    collapse_fraction = None
    generator_required = False
    no_signal = "the loss does not depend on the parameters"

    def epoch_size(self, data):
        """Number of units (captions or images) in one epoch of data's training split."""
        raise NotImplementedError

    def __call__(self, model, data, batch_size, rng):
        """Draw a minibatch of batch_size units and return (loss, grads, stats)."""
        raise NotImplementedError

    def rows(self, batch_size):
        """Caption rows the loss of one minibatch runs over (what sizes a step's memory)."""
        return batch_size


class CrossEntropy(Objective):
    """CS231n's objective: the model's own loss (the cross-entropy of each next word) on
    batch_size training captions drawn with replacement, exactly as
    capmodel.coco_utils.sample_coco_minibatch draws them (from the global NumPy random
    state when rng is None). At initialisation a captioning model predicts nearly
    uniformly, so no healthy run reaches ten times its first loss."""

    unit = "captions"
    divergence_factor = 10.0

    def epoch_size(self, data):
        return data["train_captions"].shape[0]

    def __call__(self, model, data, batch_size, rng):
        rows = minibatch_rows(data, batch_size, split="train", rng=rng)  # (N,)
        inputs = models.image_inputs(model, data, "train", data["train_image_idxs"][rows])
        loss, grads = model.loss(captions=data["train_captions"][rows], **inputs)
        return loss, grads, {}
