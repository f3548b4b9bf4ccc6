"""capmodel's fixed random-filter convolutional encoder: the offline default.

No pretrained weights are needed: the filters are drawn from a fixed seed (the same on
every machine and for every dataset): conv 5x5/2 (24 filters) -> ReLU -> conv 3x3/2 (128
filters) -> ReLU. The feature concatenates a 4x4 average-pooling grid of the second layer
(2048, keeps position) with global max and mean pooling of the second layer and global
max pooling of the first (280, translation invariant: colour and shape wherever the
object is), 2328-d in all.

Regions (extract(..., grid=G)): the second layer's map (16 x 16 at 64 pixels, 128
channels) average-pooled to G x G; at 64 pixels, G = 4 gives the numbers of the feature's
own 4x4 grid.

A linear probe on single-object images reads colour, size and position back from these
features, shape less well (benchmarks/probe_features.py prints the figures).

Dimension letters: N images, S image side, C channels, F feature dimension.
"""

import numpy as np

from capmodel.encoders.base import Encoder, EncoderError, grid_pool

NAME = "randconv"
EXTRACTOR_NAME = "capmodel-randconv-v1"  # extract()'s identity; change it if extract() changes
PREPROCESS = "rgb-center-crop-bilinear"  # square_resize()
FILTER_SEED = 20141231  # fixed: the same extractor for every dataset and machine
CONV1, CONV2, GRID = 24, 128, 4
FEATURE_DIM = GRID * GRID * CONV2 + 2 * CONV2 + CONV1  # 2328
GRID_DIM = CONV2  # the regions (grid=G) pool the second layer's map
DEFAULT_IMAGE_SIZE = 64  # the shapes images' side
MIN_IMAGE_SIZE = 16  # 4x4 grid of the second layer (stride 4)


def _filters():
    rng = np.random.default_rng(FILTER_SEED)
    w1 = rng.standard_normal((5 * 5 * 3, CONV1)).astype(np.float32) / np.sqrt(5 * 5 * 3)
    w1 -= w1.mean(axis=0)  # zero-mean filters respond to edges and colour contrasts
    b1 = rng.uniform(-0.05, 0.05, CONV1).astype(np.float32)
    w2 = rng.standard_normal((3 * 3 * CONV1, CONV2)).astype(np.float32) / np.sqrt(3 * 3 * CONV1)
    b2 = rng.uniform(-0.05, 0.05, CONV2).astype(np.float32)
    return w1, b1, w2, b2


def _im2col(x, k, stride, pad):
    """(N, S, S, C) -> (N, S', S', k*k*C) patches, with zero padding."""
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    N, S, _, C = x.shape
    out = (S - k) // stride + 1
    cols = np.empty((N, out, out, k, k, C), dtype=x.dtype)
    for i in range(k):
        for j in range(k):
            cols[:, :, :, i, j, :] = x[:, i : i + stride * out : stride, j : j + stride * out : stride, :]
    return cols.reshape(N, out, out, k * k * C)


def map_side(image_size):
    """Side of the second layer's map for pictures of image_size pixels a side (16 at 64)."""
    first = (image_size - 1) // 2 + 1  # 5x5, stride 2, padding 2
    return (first - 1) // 2 + 1  # 3x3, stride 2, padding 1


def extract(images, batch_size=256, grid=None):
    """Features of uint8 images (N, S, S, 3) -> float32 (N, 2328).

    With grid=G also the regions: the second layer's map (map_side(S) a side, 128 channels)
    average-pooled to G x G (capmodel.encoders.base.grid_pool); returns a tuple (features,
    regions float32 (N, G * G, 128)). The features are the same numbers either way.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[3] != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(f"images must have shape (N, S, S, 3), got {images.shape}")
    if grid is not None and not 1 <= grid <= map_side(images.shape[1]):
        raise EncoderError(f"grid {grid}: the second layer of encoder {NAME} is a {map_side(images.shape[1])} x "
                           f"{map_side(images.shape[1])} map at {images.shape[1]} pixels; choose a grid of at most "
                           f"{map_side(images.shape[1])}")
    w1, b1, w2, b2 = _filters()
    feats, regions = [], []
    for s in range(0, len(images), batch_size):
        x = images[s : s + batch_size].astype(np.float32) / 255.0 - 0.5
        h1 = np.maximum(_im2col(x, 5, 2, 2) @ w1 + b1, 0)  # (n, S/2, S/2, CONV1)
        h = np.maximum(_im2col(h1, 3, 2, 1) @ w2 + b2, 0)  # (n, S/4, S/4, CONV2)
        n, side = h.shape[0], h.shape[1]
        cell = side // GRID
        pooled = h[:, : cell * GRID, : cell * GRID].reshape(n, GRID, cell, GRID, cell, CONV2).mean(axis=(2, 4))
        feats.append(np.concatenate([pooled.reshape(n, -1), h.max(axis=(1, 2)), h.mean(axis=(1, 2)),
                                     h1.max(axis=(1, 2))], axis=1))
        if grid is not None:
            regions.append(grid_pool(h, grid))  # (n, G * G, CONV2)
    if not feats:
        feats = np.zeros((0, FEATURE_DIM), np.float32)
        return feats if grid is None else (feats, np.zeros((0, grid * grid, CONV2), np.float32))
    feats = np.concatenate(feats).astype(np.float32)
    return feats if grid is None else (feats, np.concatenate(regions).astype(np.float32))


def square_resize(rgb, side):
    """An RGB PIL image centre-cropped to a square and resized bilinearly -> uint8 (side, side, 3)."""
    from PIL import Image

    w, h = rgb.size
    s = min(w, h)
    rgb = rgb.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    if s != side:
        rgb = rgb.resize((side, side), Image.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


class RandConvEncoder(Encoder):
    """The fixed random-conv encoder on pictures resized to image_size pixels a side."""

    name = NAME
    feature_dim = FEATURE_DIM
    grid_dim = GRID_DIM
    batch_size = 256

    def __init__(self, image_size=DEFAULT_IMAGE_SIZE):
        if image_size < MIN_IMAGE_SIZE:
            raise EncoderError(f"--image-size must be at least {MIN_IMAGE_SIZE}, got {image_size}")
        self.image_size = int(image_size)
        self.native_grid = map_side(self.image_size)

    def preprocess(self, rgb):
        return square_resize(rgb, self.image_size)

    def _forward(self, batch, grid=None):
        return extract(batch, batch_size=self.batch_size, grid=grid)

    def record_fields(self):
        return {"extractor": EXTRACTOR_NAME, "preprocess": PREPROCESS, "image_size": self.image_size}
