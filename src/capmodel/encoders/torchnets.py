"""Pretrained CNN encoders in PyTorch: ResNet-50/101 and VGG-16, without torchvision.

The networks are written here with torch.nn.functional, layer for layer as torchvision
defines them, and read their parameters from a state_dict with exactly the keys
torchvision writes (`conv1.weight`, `bn1.running_mean`, `layer1.0.downsample.0.weight`,
`features.0.weight`, `classifier.0.weight`, ...), so a file saved with
`torch.save(model.state_dict(), FILE)` from a torchvision model, or torchvision's own
download, loads by key. Files are read with torch.load(weights_only=True), torch's
restricted loader for tensors and plain containers, never arbitrary pickle.

This is the only capmodel module that imports torch (the optional `encoders` extra).

Dimension letters: N images, F feature dimension.
"""

import torch
import torch.nn.functional as F

from capmodel.encoders import imagenet
from capmodel.encoders.base import Encoder, EncoderError
from capmodel.safety.atomic import sha256_of

RESNET_LAYERS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}
VGG16_CONVS = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
BN_EPS = 1e-5
SHOWN_KEYS = 5  # error messages list this many keys


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


def _bn(x, sd, p):
    return F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"],
                        training=False, eps=BN_EPS)


def resnet_forward(x, sd, arch):
    """Pool5 features of torchvision's ResNet: x (N, 3, H, W) -> (N, 2048)."""
    x = F.max_pool2d(F.relu(_bn(F.conv2d(x, sd["conv1.weight"], stride=2, padding=3), sd, "bn1")), 3, 2, 1)
    for i, blocks in enumerate(RESNET_LAYERS[arch]):
        for j in range(blocks):
            p, stride = f"layer{i + 1}.{j}", (2 if i > 0 and j == 0 else 1)  # v1.5: stride on the 3x3 conv
            out = F.relu(_bn(F.conv2d(x, sd[f"{p}.conv1.weight"]), sd, f"{p}.bn1"))
            out = F.relu(_bn(F.conv2d(out, sd[f"{p}.conv2.weight"], stride=stride, padding=1), sd, f"{p}.bn2"))
            out = _bn(F.conv2d(out, sd[f"{p}.conv3.weight"]), sd, f"{p}.bn3")
            if j == 0:
                x = _bn(F.conv2d(x, sd[f"{p}.downsample.0.weight"], stride=stride), sd, f"{p}.downsample.1")
            x = F.relu(out + x)
    return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


def vgg16_fc7(x, sd):
    """fc7 of torchvision's VGG-16 (classifier[:5] in eval mode): x (N, 3, H, W) -> (N, 4096)."""
    for i, v in enumerate(VGG16_CONVS):
        if v == "M":
            x = F.max_pool2d(x, 2, 2)
        else:
            k = _conv_index(i)
            x = F.relu(F.conv2d(x, sd[f"features.{k}.weight"], sd[f"features.{k}.bias"], padding=1))
    x = torch.flatten(F.adaptive_avg_pool2d(x, (7, 7)), 1)
    x = F.relu(F.linear(x, sd["classifier.0.weight"], sd["classifier.0.bias"]))  # dropout: identity in eval
    return F.relu(F.linear(x, sd["classifier.3.weight"], sd["classifier.3.bias"]))


def check_state_dict(state_dict, arch, where):
    """Raise EncoderError naming `where` and the keys unless state_dict has exactly the
    keys and shapes torchvision's `arch` writes."""
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise EncoderError(f"{where}: not a state_dict (a dict of tensors); save one with "
                           "torch.save(model.state_dict(), FILE)")
    expected = expected_shapes(arch)

    def shown(keys):
        keys = sorted(keys)
        more = f" (and {len(keys) - SHOWN_KEYS} more)" if len(keys) > SHOWN_KEYS else ""
        return ", ".join(keys[:SHOWN_KEYS]) + more

    missing, unexpected = set(expected) - set(state_dict), set(state_dict) - set(expected)
    if missing or unexpected:
        parts = ([f"missing keys {shown(missing)}"] if missing else []) + (
            [f"unexpected keys {shown(unexpected)}"] if unexpected else [])
        raise EncoderError(f"{where}: not torchvision {arch} weights: {'; '.join(parts)}")
    wrong = [f"{k} {tuple(state_dict[k].shape)} (expected {s})" for k, s in expected.items()
             if tuple(state_dict[k].shape) != s]
    if wrong:
        raise EncoderError(f"{where}: not torchvision {arch} weights: wrong shapes {', '.join(wrong[:SHOWN_KEYS])}")


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
        try:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # the safe loader raises UnpicklingError, RuntimeError, EOFError, ...
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise EncoderError(f"--weights {path}: torch's safe loader (weights_only) cannot read it: {reason}") from e
        where = f"--weights {path}"
    check_state_dict(state_dict, network.arch, where)
    sha = sha256_of(path)
    return state_dict, imagenet.weights_name_of(network, sha), sha, path


class TorchEncoder(Encoder):
    """A pretrained network with torchvision's preprocessing for its weights."""

    batch_size = 32

    def __init__(self, network, state_dict, weights_name, weights_sha256, weights_file=None):
        self.network = network
        self.name = network.name
        self.feature_dim = network.feature_dim
        self.weights_name, self.weights_sha256, self.weights_file = weights_name, weights_sha256, weights_file
        self._sd = {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}

    @classmethod
    def load(cls, network, weights_file=None):
        state_dict, name, sha, path = load_weights(network, weights_file)
        return cls(network, state_dict, name, sha, path if weights_file is not None else None)

    def preprocess(self, rgb):
        return imagenet.preprocess(rgb, self.network.resize, self.network.crop)

    def forward(self, x):
        """The features of a preprocessed batch, a torch tensor (N, 3, H, W) -> (N, F)."""
        if self.network.arch == "vgg16":
            return vgg16_fc7(x, self._sd)
        return resnet_forward(x, self._sd, self.network.arch)

    def _forward(self, batch):
        with torch.inference_mode():
            return self.forward(torch.from_numpy(batch)).numpy()

    def record_fields(self):
        return {"extractor": self.network.name, "preprocess": self.network.preprocess_name,
                "image_size": self.network.crop, "layer": self.network.layer,
                "weights": self.weights_name, "weights_sha256": self.weights_sha256,
                "weights_file": self.weights_file.name if self.weights_file is not None else None}
