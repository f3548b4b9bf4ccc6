"""Self-critical sequence training (Rennie et al. 2017, "Self-critical Sequence Training
for Image Captioning"): fine-tune a captioning model on CIDEr-D itself.

For each of N images, K captions are sampled from the model (multinomial, temperature 1,
batched over the N * K rows). Each sample's reward is its CIDEr-D against the image's
training references (capmodel.cider.CiderD.score_ids), minus a baseline:
- ``greedy``: the CIDEr-D of the model's greedy caption of the same image (Rennie et al.);
- ``mean``: the mean reward of the image's K - 1 other samples ("new self-critical").
The REINFORCE gradient of -advantage * log p(sample) is the teacher-forced gradient of
that sample weighted by its advantage, so the loss is the model's own cross-entropy loss
on the samples with per-caption weights:

    loss = -sum_i advantage_i * log p(sample_i, <END> included) / (N * K)

Works for every model family of capmodel.models through ``decoder()`` and
``loss(features, captions, weights=...)`` (with the model's regions when it attends to
them). SelfCritical is an objective of capmodel.objectives: an epoch runs over the
training images, validation scores CIDEr-D, the start is validated as epoch 0, and a
validation CIDEr-D below half the start's stops the run (a collapsed policy).
Dimension letters: N images, K samples per image, M = N * K rows, T caption length,
D feature dimension, L regions, C region channels.
"""

import numpy as np

from capmodel import decoding, models
from capmodel.objectives import Objective
from capmodel.vocab import END, START

BASELINES = ("greedy", "mean")


class SelfCritical(Objective):
    """The SCST objective: sampled captions, CIDEr-D rewards, weighted teacher-forced loss.

    Inputs:
    - scorer: a capmodel.cider.CiderD built from the training captions
    - samples: K, captions sampled per image (>= 2 for the mean baseline)
    - baseline: 'greedy' or 'mean'
    - max_length: longest sampled caption (words, <END> included)
    """

    unit = "images"
    metric = "cider"  # the validation metric: the reward's
    fine_tunes = True
    collapse_fraction = 0.5
    generator_required = True  # the sampling stream lives in checkpoints
    no_signal = ("every sampled caption was rewarded exactly as its baseline (every advantage 0), so the "
                 "rewards carry no signal: the training references cannot tell captions apart (identical "
                 "references, or a single training image)")

    def __init__(self, scorer, samples=5, baseline="greedy", max_length=16):
        if baseline not in BASELINES:
            raise ValueError(f'invalid scst_baseline "{baseline}"; choose one of {", ".join(BASELINES)}')
        if int(samples) != samples or samples < 1 or (baseline == "mean" and samples < 2):
            raise ValueError(f"scst_samples must be an integer >= {2 if baseline == 'mean' else 1}"
                             f"{' with the mean baseline' if baseline == 'mean' else ''}, got {samples}")
        self.scorer = scorer
        self.samples = int(samples)
        self.baseline = baseline
        self.max_length = int(max_length)
        self._images = (None, None)  # (train_image_idxs, its distinct images)

    def images(self, data):
        """The training images (sorted, distinct): those that have captions to reward against."""
        idxs, images = self._images
        if idxs is not data["train_image_idxs"]:
            self._images = data["train_image_idxs"], np.unique(data["train_image_idxs"])
        return self._images[1]

    def epoch_size(self, data):
        return len(self.images(data))

    def rows(self, batch_size):
        return batch_size * self.samples

    def __call__(self, model, data, batch_size, rng):
        """One SCST minibatch of batch_size training images, drawn with replacement by rng;
        returns batch_loss's (loss, grads, stats)."""
        image_idxs = rng.choice(self.images(data), batch_size)  # (N,)
        return self.batch_loss(model, image_idxs, rng, **models.image_inputs(model, data, "train", image_idxs))

    def batch_loss(self, model, image_idxs, rng, features, regions=None):
        """SCST loss of given images: loss, gradients and what happened.

        Inputs:
        - model: a model of capmodel.models
        - image_idxs: the images' indices in the training split, of shape (N,) (they pick
          the references of the reward)
        - rng: np.random.Generator for the sampling
        - features: image features, of shape (N, D)
        - regions: image regions, of shape (N, L, C), for a model that attends to them

        Returns a tuple of:
        - loss: scalar, -sum(advantage * log p(sample)) / (N * K)
        - grads: dict parallel to model.params
        - stats: dict with reward (mean reward of the samples), advantage_std, ended (the
          share of samples that produced <END>) and baseline_reward (mean baseline)
        """
        features = model.check_features(features)
        image_idxs = np.asarray(image_idxs)
        N, K = features.shape[0], self.samples
        start, end = model.word_to_idx[START], model.word_to_idx.get(END)
        rows = np.repeat(np.arange(N), K)  # (M,) image of each sample
        inputs = {"features": features} if regions is None else {"features": features, "regions": regions}
        per_sample = {k: v[rows] for k, v in inputs.items()}  # (M, D), (M, L, C)
        sampled = decoding.temperature_sample(model, max_length=self.max_length, temperature=1.0, rng=rng,
                                              **per_sample)  # (M, T)
        rewards = self.scorer.score_ids(sampled, image_idxs[rows])  # (M,)
        if not np.all(np.isfinite(rewards)):
            raise FloatingPointError(f"non-finite CIDEr-D reward for {np.count_nonzero(~np.isfinite(rewards))} "
                                     "sampled captions")
        if self.baseline == "greedy":
            greedy = decoding.greedy(model, max_length=self.max_length, **inputs)  # (N, T)
            base = self.scorer.score_ids(greedy, image_idxs)[rows]
        else:
            per_image = rewards.reshape(N, K)
            base = ((per_image.sum(axis=1, keepdims=True) - per_image) / (K - 1)).reshape(-1)
        advantage = rewards - base  # (M,)
        captions = np.concatenate([np.full((N * K, 1), start, dtype=sampled.dtype), sampled], axis=1)  # (M, T + 1)
        loss, grads = model.loss(captions=captions, weights=advantage, **per_sample)
        ended = float(np.mean(np.any(sampled == end, axis=1))) if end is not None else 0.0
        stats = {"reward": float(rewards.mean()), "advantage_std": float(advantage.std()), "ended": ended,
                 "baseline_reward": float(base.mean())}
        return loss, grads, stats
