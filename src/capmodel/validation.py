"""Validation of a captioning model after each epoch: loss on validation captions and,
optionally, a caption metric of greedy captions.

The solver calls a validator as ``validator(model) -> {"val_loss": ..., metric: ...}`` and
keeps the epoch with the best ``score(record)``; it knows nothing of captions itself.
"""

import math

import numpy as np

from capmodel import metrics, models

METRICS = ("bleu4", "cider")


class Validator:
    """Scores a model on the validation split of a data dict (load_coco_data's format).

    Inputs:
    - data: dict with val_captions (Nc, T + 1), val_image_idxs (Nc,), val_features (Ni, D)
      (and val_regions (Ni, L, C) for a model that attends to regions; see
      capmodel.models.image_inputs)
    - metric: None (the validation loss decides), 'bleu4' or 'cider'
    - val_size: Number of validation captions for the loss, a fixed subset (seed 0)
    - metric_images: Number of validation images for the metric
    - max_length: Caption length for the metric's greedy captions
    """

    def __init__(self, data, metric=None, val_size=5000, metric_images=200, max_length=16):
        if metric is not None and metric not in METRICS:
            raise ValueError(f'invalid val_metric "{metric}"; choose one of {METRICS}')
        n = data["val_captions"].shape[0]
        if n == 0:
            raise ValueError("validation needs validation captions, but the val split has none (capmodel train "
                             "always validates, to keep the best epoch): use a data set with a val split")
        if metric is not None:  # fail now, not after an epoch, without the metrics extra
            metrics.require_toolkit()
        self.data = data
        self.metric = metric
        self.metric_images = int(metric_images)
        self.max_length = int(max_length)
        self.idx = np.sort(np.random.default_rng(0).permutation(n)[: int(val_size)])
        self._refs = None

    def loss(self, model, batch_size=500):
        """Mean loss per caption over the fixed subset of validation captions, no dropout."""
        total = 0.0
        for s in range(0, len(self.idx), batch_size):
            b = self.idx[s : s + batch_size]
            inputs = models.image_inputs(model, self.data, "val", self.data["val_image_idxs"][b])
            loss, _ = model.loss(captions=self.data["val_captions"][b], training=False, **inputs)
            total += loss * len(b)
        return total / len(self.idx)

    def metric_score(self, model):
        """Corpus BLEU-4 or CIDEr-D of greedy captions on the first metric_images images."""
        if self._refs is None:  # the references do not change: decode them once
            self._refs = metrics.references_by_image(self.data, "val", self.metric_images)
        return metrics.score_split(model, self.data, "val", self.metric, max_length=self.max_length,
                                   refs=self._refs)

    def __call__(self, model):
        record = {"val_loss": self.loss(model)}
        if self.metric:
            record[self.metric] = self.metric_score(model)
        bad = [k for k, v in record.items() if not math.isfinite(v)]
        if bad:
            raise ValueError(f"validation gave a non-finite {bad[0]} ({record[bad[0]]}); check the "
                             "validation features for NaN/Inf (capmodel data check)")
        return record

    def score(self, record):
        """Higher is better: the metric, or minus the validation loss."""
        return record[self.metric] if self.metric else -record["val_loss"]
