"""Pretrained CNN encoders in PyTorch: ResNet-50/101 and VGG-16 without torchvision, and
what every torch encoder shares.

The networks are written here with torch.nn.functional, layer for layer as torchvision
defines them, and read their parameters from a state_dict with exactly the keys
torchvision writes (`conv1.weight`, `bn1.running_mean`, `layer1.0.downsample.0.weight`,
`features.0.weight`, `classifier.0.weight`, ...), so a file saved with
`torch.save(model.state_dict(), FILE)` from a torchvision model, or torchvision's own
download, loads by key.

Shared by every torch encoder (capmodel.encoders.efficientnet too):
- read_weights_file: torch.load(weights_only=True), torch's restricted loader for tensors
  and plain containers, never arbitrary pickle; errors in one line of ours (torch's advice
  to load with weights_only=False, which would run the file's code, is never shown).
- check_state_dict: exactly the expected keys and shapes, floating-point values, all
  finite, no negative batch-norm variance.
- TorchEncoder: features and the grid of region features from one feature map, refused
  when not finite; a probe forward pass at load, so weights that overflow are refused
  before any picture is read.

This module and capmodel.encoders.efficientnet are the only capmodel modules that import
torch (the optional `encoders` and `efficientnet` extras).

Dimension letters: N images, F feature dimension, G grid side, C grid channels.
"""

import re
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from capmodel.encoders import imagenet
from capmodel.encoders.base import Encoder, EncoderError
from capmodel.safety.atomic import sha256_of

RESNET_LAYERS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}
VGG16_CONVS = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
BN_EPS = 1e-5
SHOWN_KEYS = 5  # error messages list this many keys
# what torch.save writes: a zip archive (the default since PyTorch 1.6) or a pickle (protocol 2+)
TORCH_FILE_MAGIC = (b"PK\x03\x04", b"\x80")


def _bn_shapes(prefix, c):
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
            f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}


def resnet_shapes(arch):
    """{state_dict key: shape} of torchvision's resnet50/resnet101 (bottleneck blocks)."""
    shapes = {"conv1.weight": (64, 3, 7, 7), **_bn_shapes("bn1", 64)}
    inplanes = 64
    for i, (blocks, planes) in enumerate(zip(RESNET_LAYERS[arch], (64, 128, 256, 512))):
        for j in range(blocks):
            p = f"layer{i + 1}.{j}"
            shapes.update({f"{p}.conv1.weight": (planes, inplanes, 1, 1), **_bn_shapes(f"{p}.bn1", planes),
                           f"{p}.conv2.weight": (planes, planes, 3, 3), **_bn_shapes(f"{p}.bn2", planes),
                           f"{p}.conv3.weight": (planes * 4, planes, 1, 1), **_bn_shapes(f"{p}.bn3", planes * 4)})
            if j == 0:
                shapes.update({f"{p}.downsample.0.weight": (planes * 4, inplanes, 1, 1),
                               **_bn_shapes(f"{p}.downsample.1", planes * 4)})
            inplanes = planes * 4
    shapes.update({"fc.weight": (1000, 2048), "fc.bias": (1000,)})
    return shapes


def vgg16_shapes():
    """{state_dict key: shape} of torchvision's vgg16 (no batch norm)."""
    shapes, c = {}, 3
    for i, v in enumerate(VGG16_CONVS):  # features.i: conv at i, its ReLU at i + 1, "M" a max pool
        if v != "M":
            shapes.update({f"features.{_conv_index(i)}.weight": (v, c, 3, 3), f"features.{_conv_index(i)}.bias": (v,)})
            c = v
    shapes.update({"classifier.0.weight": (4096, 512 * 7 * 7), "classifier.0.bias": (4096,),
                   "classifier.3.weight": (4096, 4096), "classifier.3.bias": (4096,),
                   "classifier.6.weight": (1000, 4096), "classifier.6.bias": (1000,)})
    return shapes


def _conv_index(i):
    """Index in torchvision's `features` of the i-th entry of VGG16_CONVS (a conv adds a ReLU)."""
    return sum(1 if v == "M" else 2 for v in VGG16_CONVS[:i])


def expected_shapes(arch):
    return vgg16_shapes() if arch == "vgg16" else resnet_shapes(arch)


def batch_norm(x, sd, p, eps=BN_EPS):
    """Batch norm in eval mode with the running statistics of state_dict prefix p."""
    return F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"],
                        training=False, eps=eps)


def resnet_layer4(x, sd, arch):
    """layer4's map of torchvision's ResNet: x (N, 3, H, W) -> (N, 2048, H/32, W/32)."""
    x = F.max_pool2d(F.relu(batch_norm(F.conv2d(x, sd["conv1.weight"], stride=2, padding=3), sd, "bn1")), 3, 2, 1)
    for i, blocks in enumerate(RESNET_LAYERS[arch]):
        for j in range(blocks):
            p, stride = f"layer{i + 1}.{j}", (2 if i > 0 and j == 0 else 1)  # v1.5: stride on the 3x3 conv
            out = F.relu(batch_norm(F.conv2d(x, sd[f"{p}.conv1.weight"]), sd, f"{p}.bn1"))
            out = F.relu(batch_norm(F.conv2d(out, sd[f"{p}.conv2.weight"], stride=stride, padding=1), sd, f"{p}.bn2"))
            out = batch_norm(F.conv2d(out, sd[f"{p}.conv3.weight"]), sd, f"{p}.bn3")
            if j == 0:
                x = batch_norm(F.conv2d(x, sd[f"{p}.downsample.0.weight"], stride=stride), sd, f"{p}.downsample.1")
            x = F.relu(out + x)
    return x


def global_average(fmap):
    """(N, C, H, W) -> (N, C): the global average pool."""
    return torch.flatten(F.adaptive_avg_pool2d(fmap, 1), 1)


def vgg16_conv5_3(x, sd):
    """conv5_3 of torchvision's VGG-16 after its ReLU (features[:30]): x (N, 3, H, W) -> (N, 512, H/16, W/16)."""
    for i, v in enumerate(VGG16_CONVS[:-1]):
        if v == "M":
            x = F.max_pool2d(x, 2, 2)
        else:
            k = _conv_index(i)
            x = F.relu(F.conv2d(x, sd[f"features.{k}.weight"], sd[f"features.{k}.bias"], padding=1))
    return x


def vgg16_fc7(conv5_3, sd):
    """fc7 of torchvision's VGG-16 (pool5, avgpool, classifier[:5] in eval mode) from conv5_3's map -> (N, 4096)."""
    x = torch.flatten(F.adaptive_avg_pool2d(F.max_pool2d(conv5_3, 2, 2), (7, 7)), 1)
    x = F.relu(F.linear(x, sd["classifier.0.weight"], sd["classifier.0.bias"]))  # dropout: identity in eval
    return F.relu(F.linear(x, sd["classifier.3.weight"], sd["classifier.3.bias"]))


def _shown(keys):
    keys = sorted(keys)
    more = f" (and {len(keys) - SHOWN_KEYS} more)" if len(keys) > SHOWN_KEYS else ""
    return ", ".join(keys[:SHOWN_KEYS]) + more


def _torch_reason(error):
    """torch's loading error in one line, without its advice to load with weights_only=False
    (which would run whatever code the file holds)."""
    text = str(error)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return f"it holds a {found.group(1)} object; only tensors and plain containers are read"
    found = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|$)", text, re.S)
    if found:
        return " ".join(found.group(1).split())
    if "weights_only" in text:
        return type(error).__name__
    first = text.strip().splitlines()[0].split(". ")[0] if text.strip() else ""
    return first or type(error).__name__


def read_weights_file(path, where):
    """What torch.save wrote to path, read with torch.load(weights_only=True); EncoderError
    (one line naming `where`) for a file that is not one, or that the safe loader refuses."""
    with open(path, "rb") as f:
        head = f.read(4)
    if not head.startswith(TORCH_FILE_MAGIC):
        raise EncoderError(f"{where}: not a PyTorch weights file (torch.save(model.state_dict(), FILE) writes a "
                           f"zip archive; this file starts with {head!r})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns on stderr about pickle protocols
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # the safe loader raises UnpicklingError, RuntimeError, EOFError, KeyError, ...
        raise EncoderError(f"{where}: torch's safe loader (weights_only) cannot read it: {_torch_reason(e)}") from e


def check_state_dict(state_dict, expected, what, where):
    """Raise EncoderError naming `where` and the keys unless state_dict has exactly the keys
    and shapes of `expected` ({key: shape}, the weights of `what`), floating-point values
    (batch norm's step counters `num_batches_tracked` aside), all finite, and no negative
    batch-norm variance."""
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise EncoderError(f"{where}: not a state_dict (a dict of tensors); save one with "
                           "torch.save(model.state_dict(), FILE)")
    missing, unexpected = set(expected) - set(state_dict), set(state_dict) - set(expected)
    if missing or unexpected:
        parts = ([f"missing keys {_shown(missing)}"] if missing else []) + (
            [f"unexpected keys {_shown(unexpected)}"] if unexpected else [])
        raise EncoderError(f"{where}: not {what} weights: {'; '.join(parts)}")
    wrong = [f"{k} {tuple(state_dict[k].shape)} (expected {s})" for k, s in expected.items()
             if tuple(state_dict[k].shape) != s]
    if wrong:
        raise EncoderError(f"{where}: not {what} weights: wrong shapes {', '.join(wrong[:SHOWN_KEYS])}")
    values = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    ints = [f"{k} ({str(v.dtype).replace('torch.', '')})" for k, v in sorted(values.items())
            if not v.is_floating_point()]
    if ints:
        raise EncoderError(f"{where}: not {what} weights: the weights must be floating point, but "
                           f"{_shown(ints)} {'is' if len(ints) == 1 else 'are'} not")
    broken = [k for k, v in values.items() if not torch.isfinite(v).all()]
    if broken:
        raise EncoderError(f"{where}: broken weights: {_shown(broken)} hold{'s' if len(broken) == 1 else ''} NaN "
                           "or infinite values")
    negative = [k for k, v in values.items() if k.endswith("running_var") and (v < 0).any()]
    if negative:
        raise EncoderError(f"{where}: broken weights: {_shown(negative)} hold{'s' if len(negative) == 1 else ''} "
                           "negative batch-norm variances")


def load_weights(network, weights_file=None):
    """(state_dict, torchvision weights name or None, file SHA-256, file) of the network's weights.

    Without weights_file, torchvision's download for the network through torch.hub (the
    cache torchvision uses: $TORCH_HOME/hub/checkpoints); raises EncoderError when it
    cannot be fetched, asking for --weights.
    """
    if weights_file is None:
        path = imagenet.cached_weights_path(network, torch.hub.get_dir())
        try:
            state_dict = torch.hub.load_state_dict_from_url(network.url, map_location="cpu", progress=False,
                                                            check_hash=True, weights_only=True)
        except Exception as e:  # urllib, hash and file errors alike: one line
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise EncoderError(f"encoder {network.name}: cannot download torchvision's {network.weights} from "
                               f"{network.url} ({reason}); pass --weights FILE, a state_dict saved by "
                               "torchvision (see docs/own-data.md)") from e
        where = f"{network.weights} ({path})"
    else:
        path = weights_file
        if not path.is_file():
            raise EncoderError(f"--weights {path}: no such file")
        where = f"--weights {path}"
        state_dict = read_weights_file(path, where)
    check_state_dict(state_dict, expected_shapes(network.arch), f"torchvision {network.arch}", where)
    sha = sha256_of(path)
    return state_dict, imagenet.weights_name_of(network, sha), sha, path


class TorchEncoder(Encoder):
    """A pretrained network with the preprocessing of its weights; here torchvision's
    ResNet and VGG. Subclasses (capmodel.encoders.efficientnet) define preprocess(),
    feature_map() and pool(); _forward() makes the features and the grid from them."""

    batch_size = 32

    def __init__(self, network, state_dict, weights_name, weights_sha256, weights_file=None):
        self.network = network
        self.name = network.name
        self.feature_dim, self.grid_dim, self.native_grid = network.feature_dim, network.grid_dim, network.native_grid
        self.weights_name, self.weights_sha256, self.weights_file = weights_name, weights_sha256, weights_file
        self._sd = {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}

    @classmethod
    def load(cls, network, weights_file=None):
        state_dict, name, sha, path = load_weights(network, weights_file)
        return cls(network, state_dict, name, sha, path if weights_file is not None else None).probed()

    @property
    def input_side(self):
        return self.network.crop

    def preprocess(self, rgb):
        return imagenet.preprocess(rgb, self.network.resize, self.network.crop)

    def feature_map(self, x):
        """The grid layer's map of a preprocessed batch: torch (N, 3, H, W) -> (N, C, H', W')."""
        if self.network.arch == "vgg16":
            return vgg16_conv5_3(x, self._sd)
        return resnet_layer4(x, self._sd, self.network.arch)

    def pool(self, fmap):
        """The features from the grid layer's map: (N, C, H', W') -> (N, F)."""
        if self.network.arch == "vgg16":
            return vgg16_fc7(fmap, self._sd)
        return global_average(fmap)

    def forward(self, x):
        """The features of a preprocessed batch, a torch tensor (N, 3, H, W) -> (N, F)."""
        return self.pool(self.feature_map(x))

    def _forward(self, batch, grid=None):
        with torch.inference_mode():
            fmap = self.feature_map(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)))
            feats = self.pool(fmap).numpy()
            if grid is not None:  # (N, C, G, G) -> (N, G*G, C), region r*G + c
                regions = F.adaptive_avg_pool2d(fmap, grid).flatten(2).transpose(1, 2).contiguous().numpy()
        self._check_finite(feats if grid is None else np.concatenate([feats, regions.reshape(len(feats), -1)], 1))
        return feats if grid is None else (feats, regions)

    def _check_finite(self, values):
        bad = int((~np.isfinite(values)).any(axis=1).sum())
        if bad:
            raise EncoderError(f"encoder {self.name}: its weights ({self.weights_label}) give features that are not "
                               f"finite (NaN or infinite) for {bad} of {len(values)} pictures; the weights are broken")

    @property
    def weights_label(self):
        if self.weights_file is not None:
            return f"--weights {self.weights_file}"
        return self.weights_name or f"sha256 {self.weights_sha256}"

    def probed(self):
        """self, after a forward pass of one mid-grey picture: weights whose features overflow
        are refused here, before any picture is read or any file made."""
        self._forward(np.zeros((1, 3, self.input_side, self.input_side), np.float32))
        return self

    def record_fields(self):
        return {"extractor": self.network.name, "preprocess": self.network.preprocess_name,
                "image_size": self.network.crop, "layer": self.network.layer,
                "weights": self.weights_name, "weights_sha256": self.weights_sha256,
                "weights_file": self.weights_file.name if self.weights_file is not None else None}
