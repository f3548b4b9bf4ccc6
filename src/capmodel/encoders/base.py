"""The interface every image encoder has: a name, a feature width, preprocessing, extract().

An encoder turns RGB pictures into one feature vector each, in two steps so that the
(slow) network sees fixed-size batches: preprocess() makes one picture the network's
input, extract() runs the network over a stack of inputs, batch_size at a time.

Asked for a grid (grid=G), an encoder also returns region features: the map of its grid
layer (grid_dim channels, native_grid x native_grid at the encoder's input size) average-
pooled to G x G bins as PyTorch's adaptive_avg_pool2d pools (grid_pool), flattened row-major
(region r * G + c), channels last.

Dimension letters: N images, F feature dimension, H and W map height and width, C channels
of the grid layer, G grid side, L = G * G regions.
"""

import numpy as np


class EncoderError(ValueError):
    """An encoder cannot be made: unknown name, missing PyTorch, unusable weights."""


def grid_bins(size, grid):
    """The [start, stop) of each of grid bins over size positions, as adaptive_avg_pool2d cuts
    them: bin i covers [floor(i * size / grid), ceil((i + 1) * size / grid)) (bins overlap when
    size is not a multiple of grid)."""
    return [(i * size // grid, -(-(i + 1) * size // grid)) for i in range(grid)]


def grid_pool(maps, grid):
    """Average-pool maps to a grid x grid grid with PyTorch's adaptive_avg_pool2d bins.

    Inputs:
    - maps: Feature maps, channels last, of shape (N, H, W, C), with H, W >= grid
    - grid: Side G of the grid

    Returns regions of shape (N, G * G, C) in the maps' dtype, region r * G + c being bin
    (r, c) (row-major).
    """
    maps = np.asarray(maps)
    N, H, W, C = maps.shape
    if not 1 <= grid <= min(H, W):
        raise EncoderError(f"grid {grid}: a {H} x {W} map pools to grids of 1 to {min(H, W)} a side")
    # A bin is a rectangle, so its mean is the mean over its rows of the means over its columns.
    rows = np.stack([maps[:, a:b].mean(axis=1) for a, b in grid_bins(H, grid)], axis=1)  # (N, G, W, C)
    cells = np.stack([rows[:, :, a:b].mean(axis=2) for a, b in grid_bins(W, grid)], axis=2)  # (N, G, G, C)
    return cells.reshape(N, grid * grid, C)


class Encoder:
    """Base class. Subclasses set name, feature_dim, grid_dim, native_grid, record_fields and
    define preprocess(rgb) and _forward(batch, grid=None)."""

    name = ""
    feature_dim = 0
    grid_dim = 0  # C: channels of the grid layer
    native_grid = 0  # side of the grid layer's map at the encoder's input size
    batch_size = 64

    def preprocess(self, rgb):
        """One RGB PIL image -> the network's input for it (a NumPy array)."""
        raise NotImplementedError

    def _forward(self, batch, grid=None):
        """One batch of inputs -> features (n, F), or with grid=G a tuple (features (n, F),
        regions (n, G * G, C))."""
        raise NotImplementedError

    def check_grid(self, grid):
        """Raise EncoderError (one line) unless grid is None or a side from 1 to native_grid."""
        if grid is None:
            return
        if isinstance(grid, bool) or not isinstance(grid, (int, np.integer)) or grid < 1:
            raise EncoderError(f"grid {grid!r}: a grid's side must be a positive whole number of regions")
        if not self.native_grid:
            raise EncoderError(f"grid {grid}: encoder {self.name} has no grid layer, so it gives no regions")
        if grid > self.native_grid:
            raise EncoderError(f"grid {grid}: encoder {self.name}'s grid layer is a {self.native_grid} x "
                               f"{self.native_grid} map at its input size; choose a grid of at most {self.native_grid}")

    def extract(self, inputs, grid=None):
        """Features of preprocessed inputs (N, ...) -> float32 (N, F), batch_size at a time.

        With grid=G: a tuple (features float32 (N, F), regions float32 (N, G * G, C)).
        """
        inputs = np.asarray(inputs)
        if grid is None:
            feats = [self._forward(inputs[s : s + self.batch_size]) for s in range(0, len(inputs), self.batch_size)]
            return np.concatenate(feats).astype(np.float32) if feats else np.zeros((0, self.feature_dim), np.float32)
        self.check_grid(grid)
        feats, regions = [], []
        for s in range(0, len(inputs), self.batch_size):
            f, r = self._forward(inputs[s : s + self.batch_size], grid)
            feats.append(np.asarray(f, dtype=np.float32))
            regions.append(np.asarray(r, dtype=np.float32))
        if not feats:
            return np.zeros((0, self.feature_dim), np.float32), np.zeros((0, grid * grid, self.grid_dim), np.float32)
        return np.concatenate(feats), np.concatenate(regions)

    def encode(self, pictures, grid=None):
        """Features of RGB PIL images, from any iterable (a generator keeps only one batch
        of decoded pictures in memory) -> float32 (N, F); with grid=G a tuple (features,
        regions float32 (N, G * G, C)) as extract()."""
        if grid is not None:
            self.check_grid(grid)
        run = self.extract if grid is None else lambda x: self.extract(x, grid)
        out, batch = [], []
        for rgb in pictures:
            batch.append(self.preprocess(rgb))
            if len(batch) == self.batch_size:
                out.append(run(np.stack(batch)))
                batch = []
        if batch or not out:
            out.append(run(np.stack(batch)) if batch else self._empty(grid))
        if grid is None:
            return np.concatenate(out)
        return np.concatenate([f for f, _ in out]), np.concatenate([r for _, r in out])

    def _empty(self, grid):
        feats = np.zeros((0, self.feature_dim), np.float32)
        return feats if grid is None else (feats, np.zeros((0, grid * grid, self.grid_dim), np.float32))

    def record_fields(self):
        """What a data set records to compute these features again (JSON-ready dict)."""
        raise NotImplementedError

