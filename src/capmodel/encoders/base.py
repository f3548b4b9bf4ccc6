"""The interface every image encoder has: a name, a feature width, preprocessing, extract().

An encoder turns RGB pictures into one feature vector each, in two steps so that the
(slow) network sees fixed-size batches: preprocess() makes one picture the network's
input, extract() runs the network over a stack of inputs, batch_size at a time.

Dimension letters: N images, F feature dimension.
"""

import numpy as np


class EncoderError(ValueError):
    """An encoder cannot be made: unknown name, missing PyTorch, unusable weights."""


class Encoder:
    """Base class. Subclasses set name, feature_dim, record_fields and define
    preprocess(rgb) and _forward(batch)."""

    name = ""
    feature_dim = 0
    batch_size = 64

    def preprocess(self, rgb):
        """One RGB PIL image -> the network's input for it (a NumPy array)."""
        raise NotImplementedError

    def _forward(self, batch):
        raise NotImplementedError

    def extract(self, inputs):
        """Features of preprocessed inputs (N, ...) -> float32 (N, F), batch_size at a time."""
        inputs = np.asarray(inputs)
        feats = [self._forward(inputs[s : s + self.batch_size]) for s in range(0, len(inputs), self.batch_size)]
        return np.concatenate(feats).astype(np.float32) if feats else np.zeros((0, self.feature_dim), np.float32)

    def encode(self, pictures):
        """Features of RGB PIL images, from any iterable (a generator keeps only one batch
        of decoded pictures in memory) -> float32 (N, F)."""
        feats, batch = [], []
        for rgb in pictures:
            batch.append(self.preprocess(rgb))
            if len(batch) == self.batch_size:
                feats.append(self.extract(np.stack(batch)))
                batch = []
        if batch or not feats:
            feats.append(self.extract(np.stack(batch)) if batch else np.zeros((0, self.feature_dim), np.float32))
        return np.concatenate(feats)

    def record_fields(self):
        """What a data set records to compute these features again (JSON-ready dict)."""
        raise NotImplementedError
