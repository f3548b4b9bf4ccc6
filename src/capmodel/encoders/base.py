"""The interface every image encoder has: a name, a feature width, preprocessing, extract().

An encoder turns RGB pictures into one feature vector each, in two steps so that the
(slow) network sees fixed-size batches: preprocess() makes one picture the network's
input, extract() runs the network over a stack of inputs, batch_size at a time.

With grid=G, extract() and encode() also return a grid of region features: the encoder's
grid layer (grid_dim channels, a native_grid x native_grid map for the encoder's input)
average-pooled to G x G with PyTorch's adaptive_avg_pool2d bins (bin i covers
[floor(i*S/G), ceil((i+1)*S/G)) of a side S), flattened row-major (region r*G + c),
channels last.

Dimension letters: N images, F feature dimension, G grid side, C grid channels.
"""

import numpy as np


class EncoderError(ValueError):
    """An encoder cannot be made: unknown name, missing PyTorch, unusable weights."""


class Encoder:
    """Base class. Subclasses set name, feature_dim, grid_dim, native_grid, record_fields and
    define preprocess(rgb) and _forward(batch, grid=None)."""

    name = ""
    feature_dim = 0
    grid_dim = 0  # C: channels of the grid layer
    native_grid = 0  # side of the grid layer's map for the encoder's input
    batch_size = 64

    def preprocess(self, rgb):
        """One RGB PIL image -> the network's input for it (a NumPy array)."""
        raise NotImplementedError

    def _forward(self, batch, grid=None):
        """One batch of inputs -> features (n, F); with grid=G, (features (n, F), regions (n, G*G, C))."""
        raise NotImplementedError

    def _check_grid(self, grid):
        if grid is None:
            return None
        if isinstance(grid, bool) or not isinstance(grid, (int, np.integer)) or grid < 1:
            raise EncoderError(f"grid must be a whole number >= 1, got {grid!r}")
        if grid > self.native_grid:
            raise EncoderError(f"grid {grid}: encoder {self.name}'s grid layer is {self.native_grid} x "
                               f"{self.native_grid}; choose a grid of at most {self.native_grid}")
        return int(grid)

    def _empty(self, grid):
        feats = np.zeros((0, self.feature_dim), np.float32)
        return feats if grid is None else (feats, np.zeros((0, grid * grid, self.grid_dim), np.float32))

    @staticmethod
    def _join(parts, grid):
        if grid is None:
            return np.concatenate(parts).astype(np.float32, copy=False)
        return (np.concatenate([f for f, _ in parts]).astype(np.float32, copy=False),
                np.concatenate([r for _, r in parts]).astype(np.float32, copy=False))

    def extract(self, inputs, grid=None):
        """Features of preprocessed inputs (N, ...) -> float32 (N, F), batch_size at a time;
        with grid=G, the tuple (features (N, F), regions (N, G*G, C)), both float32."""
        grid = self._check_grid(grid)
        inputs = np.asarray(inputs)
        parts = [self._forward(inputs[s : s + self.batch_size]) if grid is None
                 else self._forward(inputs[s : s + self.batch_size], grid)
                 for s in range(0, len(inputs), self.batch_size)]
        return self._join(parts, grid) if parts else self._empty(grid)

    def encode(self, pictures, grid=None):
        """Features of RGB PIL images, from any iterable (a generator keeps only one batch
        of decoded pictures in memory) -> float32 (N, F), or with grid=G the tuple
        (features (N, F), regions (N, G*G, C))."""
        grid = self._check_grid(grid)
        parts, batch = [], []
        for rgb in pictures:
            batch.append(self.preprocess(rgb))
            if len(batch) == self.batch_size:
                parts.append(self._extract_batch(batch, grid))
                batch = []
        if batch:
            parts.append(self._extract_batch(batch, grid))
        return self._join(parts, grid) if parts else self._empty(grid)

    def _extract_batch(self, batch, grid):
        return self.extract(np.stack(batch)) if grid is None else self.extract(np.stack(batch), grid)

    def record_fields(self):
        """What a data set records to compute these features again (JSON-ready dict)."""
        raise NotImplementedError
