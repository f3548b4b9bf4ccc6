"""The pretrained CNNs capmodel supports: torchvision's ImageNet weights and preprocessing.

This module needs no PyTorch: it holds what is known about each network (the torchvision
weights it takes, their download URL, the layer the features come from) and does
torchvision's preprocessing of those weights with PIL and NumPy, exactly as
torchvision.transforms' ImageClassification preset does on a PIL image: resize the shorter
side to `resize` with PIL bilinear (long side int(resize * long / short)), crop
`crop` x `crop` at int(round((h - crop) / 2)), divide by 255 and normalise with the
ImageNet mean and standard deviation, in float32.

Dimension letters: N images, F feature dimension, C grid channels.
"""

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Network:
    """One supported network with one set of torchvision weights.

    - name: capmodel's encoder name (--encoder)
    - arch: the torchvision model function (resnet50, resnet101, vgg16)
    - weights: torchvision's name of the weights (ResNet50_Weights.IMAGENET1K_V1)
    - url: torchvision's download URL of those weights (its file name ends in the first
      hex digits of the file's SHA-256)
    - resize, crop: torchvision's preprocessing preset for those weights
    - feature_dim, layer: width of the features and the layer they come from
    - grid_dim, native_grid, grid_layer: channels C and side of the grid of region features
      at crop x crop, and the layer they come from
    """

    name: str
    arch: str
    weights: str
    url: str
    resize: int
    crop: int
    feature_dim: int
    layer: str
    grid_dim: int
    native_grid: int
    grid_layer: str


    @property
    def preprocess_name(self):
        return f"imagenet-resize{self.resize}-crop{self.crop}-bilinear"

    @property
    def url_hash(self):
        """The SHA-256 prefix torch.hub checks (the part of the file name after the last '-')."""
        return PurePosixPath(self.url).stem.rsplit("-", 1)[1]


_POOL5 = "global average pool after layer4 (the input of fc)"
_FC7 = "fc7: classifier.4, the ReLU after the second 4096-wide linear layer (CS231n's feature)"
_LAYER4 = "layer4 (7 x 7 at 224)"
_CONV5_3 = "conv5_3 after its ReLU (features.29, 14 x 14 at 224), average-pooled to at most 7 x 7"
_RESNET_GRID = (2048, 7, _LAYER4)
NETWORKS = {n.name: n for n in [
    Network("resnet50", "resnet50", "ResNet50_Weights.IMAGENET1K_V1",
            "https://download.pytorch.org/models/resnet50-0676ba61.pth", 256, 224, 2048, _POOL5, *_RESNET_GRID),
    Network("resnet50-v2", "resnet50", "ResNet50_Weights.IMAGENET1K_V2",
            "https://download.pytorch.org/models/resnet50-11ad3fa6.pth", 232, 224, 2048, _POOL5, *_RESNET_GRID),
    Network("resnet101", "resnet101", "ResNet101_Weights.IMAGENET1K_V1",
            "https://download.pytorch.org/models/resnet101-63fe2227.pth", 256, 224, 2048, _POOL5, *_RESNET_GRID),
    Network("resnet101-v2", "resnet101", "ResNet101_Weights.IMAGENET1K_V2",
            "https://download.pytorch.org/models/resnet101-cd907fc2.pth", 232, 224, 2048, _POOL5, *_RESNET_GRID),
    Network("vgg16", "vgg16", "VGG16_Weights.IMAGENET1K_V1",
            "https://download.pytorch.org/models/vgg16-397923af.pth", 256, 224, 4096, _FC7, 512, 7, _CONV5_3),
]}


def preprocess(rgb, resize, crop):
    """torchvision's ImageClassification preset on an RGB PIL image -> float32 (3, crop, crop)."""
    from PIL import Image

    if resize < crop:
        raise ValueError(f"resize {resize} must be at least the crop {crop}")
    w, h = rgb.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = resize, int(resize * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) != (w, h):
        rgb = rgb.resize((new_w, new_h), Image.BILINEAR)
    top, left = int(round((new_h - crop) / 2.0)), int(round((new_w - crop) / 2.0))
    rgb = rgb.crop((left, top, left + crop, top + crop))
    x = np.asarray(rgb, dtype=np.uint8).astype(np.float32) / 255  # (crop, crop, 3)
    x = (x - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def weights_name_of(network, sha256):
    """torchvision's weights name when a file's SHA-256 matches the network's download, else None."""
    return network.weights if sha256.startswith(network.url_hash) else None


def cached_weights_path(network, hub_dir):
    """Where torch.hub (and so torchvision) caches the network's download."""
    return Path(hub_dir) / "checkpoints" / PurePosixPath(network.url).name
