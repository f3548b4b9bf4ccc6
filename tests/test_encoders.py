"""Tests of capmodel.encoders: the registry, the random-conv default, and the pretrained CNNs
held to torchvision's own preprocessing and forward pass, grid included (random weights, no
download); weights files that are not usable weights. EfficientNet-Lite: tests/test_efficientnet.py."""

import importlib
import json
import re

import numpy as np
import pytest
from PIL import Image

from capmodel.app.cli import main
from capmodel.datasets import features as feat
from capmodel.datasets import folder
from capmodel.encoders import imagenet, randconv, registry
from synthetic import photo_folder_with_csv

SIZES = [(64, 64), (300, 200), (120, 250)]  # (width, height): square, landscape, portrait


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """Three smooth random RGB pictures of different sizes and orientations, as PNG files."""
    d = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate(SIZES):
        small = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
        Image.fromarray(small).resize((w, h), Image.BILINEAR).save(d / f"p{i}.png")
        paths.append(d / f"p{i}.png")
    return paths


def test_registry_names_and_the_default():
    assert registry.DEFAULT == "randconv" and registry.NAMES[0] == "randconv"
    assert {"resnet50", "resnet101", "vgg16", "efficientnet-lite0", "efficientnet-lite1",
            "efficientnet-lite2"} <= set(registry.NAMES)
    enc = registry.get_encoder()
    assert (enc.name, enc.feature_dim, enc.image_size) == ("randconv", 2328, 64)
    with pytest.raises(registry.EncoderError, match="unknown encoder 'alexnet'; choose one of randconv"):
        registry.get_encoder("alexnet")
    with pytest.raises(registry.EncoderError, match="takes no weights file"):
        registry.get_encoder("randconv", weights="w.pt")


def test_randconv_encoder_equals_the_dataset_features(pictures):
    """The default encoder's features of files are those of read_images + extract."""
    enc = registry.get_encoder("randconv", image_size=32)
    enc.batch_size = 2  # several batches
    got = folder.encode_files(pictures, enc)
    want = feat.extract(folder.read_images(pictures, 32))
    assert got.dtype == np.float32 and np.array_equal(got, want)
    assert enc.encode([]).shape == (0, randconv.FEATURE_DIM)


def test_without_torch_a_torch_encoder_fails_up_front_with_the_install_command(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(registry.importlib.util, "find_spec", lambda name: None)
    photo_folder_with_csv(tmp_path)
    code = main(["data", "from-folder", str(tmp_path / "photos"), str(tmp_path / "captions.csv"),
                 str(tmp_path / "data"), "--encoder", "resnet50"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "encoder resnet50 needs PyTorch, which is not installed: pip install 'capmodel[encoders]'" in err
    assert not (tmp_path / "data").exists()


# ------------------------------------------------------- torch and torchvision


@pytest.mark.parametrize("name", ["resnet50", "resnet50-v2", "vgg16"])
def test_preprocessing_is_torchvisions_preset_exactly(name, pictures, torchvision):
    network = imagenet.NETWORKS[name]
    weights_enum, member = network.weights.split(".")
    preset = getattr(getattr(torchvision.models, weights_enum), member).transforms()
    assert (preset.resize_size, preset.crop_size) == ([network.resize], [network.crop])
    assert getattr(torchvision.models, weights_enum).__dict__[member].url == network.url
    for p in pictures:
        rgb = folder.open_rgb(p)
        assert np.array_equal(imagenet.preprocess(rgb, network.resize, network.crop), preset(rgb).numpy())


def _random_torchvision_model(torchvision, arch, images):
    """A randomly initialised torchvision model with non-trivial batch-norm statistics (one
    training-mode pass over images, then random affine parameters), in eval mode."""
    import torch

    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:
        m.momentum = None  # running statistics = those of the pass below
    if bns:
        with torch.no_grad():
            model.train()(images)
            for m in bns:
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


@pytest.mark.parametrize("name", ["resnet50", "resnet101", "vgg16"])
def test_weights_file_gives_torchvisions_features(name, pictures, torchvision, tmp_path):
    """A random torchvision model saved with torch.save(state_dict) and loaded by key gives the
    features of torchvision's own forward pass (resnet: the input of fc; vgg16: classifier[:5],
    fc7) on the same pictures with torchvision's preprocessing, and its grid layer's map (resnet:
    layer4; vgg16: conv5_3 after its ReLU, features[:30]) pooled as adaptive_avg_pool2d."""
    import torch

    network = imagenet.NETWORKS[name]
    weights_enum, member = network.weights.split(".")
    preset = getattr(getattr(torchvision.models, weights_enum), member).transforms()
    x = torch.stack([preset(folder.open_rgb(p)) for p in pictures])  # (3, 3, 224, 224)
    model = _random_torchvision_model(torchvision, network.arch, x)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    trunk = model.features[:30] if name == "vgg16" else torch.nn.Sequential(*list(model.children())[:-2])
    if name == "vgg16":
        model.classifier = model.classifier[:5]
    else:
        model.fc = torch.nn.Identity()
    with torch.no_grad():
        want, fmap = model(x).numpy(), trunk(x)  # fmap (3, C, 7 or 14, 7 or 14)

    enc = registry.get_encoder(name, weights=tmp_path / "w.pt")
    enc.batch_size = 2  # two batches
    got = folder.encode_files(pictures, enc)
    assert got.shape == (3, network.feature_dim) and got.dtype == np.float32
    assert np.abs(want).max() > 1e-3 and np.abs(want - want[0]).max() > 1e-3  # not all zero, not all alike
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    assert enc.weights_name is None and len(enc.weights_sha256) == 64

    assert (enc.grid_dim, enc.native_grid) == ((512, 7) if name == "vgg16" else (2048, 7))
    assert fmap.shape[1:] == ((512, 14, 14) if name == "vgg16" else (2048, 7, 7))
    plain, grids = enc.extract(x.numpy()), {}  # each forward once (a ResNet-101 pass is ~2 s)
    for G in (7, 3):
        feats, grids[G] = enc.extract(x.numpy(), grid=G)
        np.testing.assert_array_equal(feats, plain)
        pooled = torch.nn.functional.adaptive_avg_pool2d(fmap, G).flatten(2).transpose(1, 2).numpy()
        assert grids[G].shape == (3, G * G, enc.grid_dim) and grids[G].dtype == np.float32
        np.testing.assert_allclose(grids[G], pooled, rtol=1e-5, atol=1e-5 * np.abs(pooled).max())
    if name != "vgg16":  # the features are the average pool of the grid layer
        np.testing.assert_allclose(grids[7].mean(axis=1), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    with pytest.raises(registry.EncoderError, match=f"^grid 8: encoder {name}'s grid layer is a 7 x 7 map"):
        enc.extract(x.numpy(), grid=8)


def test_bad_weights_files_fail_with_one_line_naming_file_and_keys(resnet50_file, tmp_path):
    import torch

    sd = torch.load(resnet50_file, weights_only=True)
    wrong = dict(sd)
    del wrong["layer1.0.conv1.weight"]
    wrong["head.weight"] = torch.zeros(3)
    torch.save(wrong, tmp_path / "wrong.pt")
    with pytest.raises(registry.EncoderError, match=r"--weights .*wrong.pt: not torchvision resnet50 weights: "
                       r"missing keys layer1.0.conv1.weight; unexpected keys head.weight"):
        registry.get_encoder("resnet50", weights=tmp_path / "wrong.pt")
    with pytest.raises(registry.EncoderError,
                       match=r"resnet101 weights: missing keys layer3.10.bn1.bias, .* \(and 301 more\)$"):
        registry.get_encoder("resnet101", weights=resnet50_file)
    (tmp_path / "junk.pt").write_bytes(b"PK\x03\x04 but no zip archive")
    with pytest.raises(registry.EncoderError, match=r"junk.pt: torch's safe loader \(weights_only\) cannot read it: "
                       r"PytorchStreamReader failed reading zip archive: failed finding central directory$"):
        registry.get_encoder("resnet50", weights=tmp_path / "junk.pt")
    with pytest.raises(registry.EncoderError, match="--weights .*none.pt: no such file"):
        registry.get_encoder("vgg16", weights=tmp_path / "none.pt")


def test_without_weights_file_the_download_fails_with_one_line(monkeypatch, tmp_path):
    torch = pytest.importorskip("torch")

    def offline(url, **kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(registry.EncoderError) as e:
        registry.get_encoder("resnet50")
    assert str(e.value) == (
        "encoder resnet50: cannot download torchvision's ResNet50_Weights.IMAGENET1K_V1 from "
        "https://download.pytorch.org/models/resnet50-0676ba61.pth (<urlopen error [Errno -3] Temporary failure "
        "in name resolution>); pass --weights FILE, a state_dict saved by torchvision (see docs/own-data.md)")


def test_from_folder_with_a_pretrained_encoder_records_it_and_caption_reuses_it(resnet50_file, tmp_path, capsys):
    from capmodel import checkpoints
    from capmodel.app import captioner, pipeline
    from capmodel.coco_utils import load_coco_data

    photo_folder_with_csv(tmp_path)
    code = main(["data", "from-folder", str(tmp_path / "photos"), str(tmp_path / "captions.csv"),
                 str(tmp_path / "data"), "--encoder", "resnet50", "--weights", str(resnet50_file), "--pca", "4"])
    assert code == 0, capsys.readouterr().err
    record = json.loads((tmp_path / "data" / feat.RECORD_FILE).read_text())
    assert record["extractor"] == "resnet50" and record["preprocess"] == "imagenet-resize256-crop224-bilinear"
    assert record["weights"] is None and record["weights_file"] == "resnet50.pt"
    assert record["weights_sha256"] == feat.sha256_of(resnet50_file)
    assert (record["feature_dim"], record["pca_components"], record["pca_dim"]) == (2048, 4, 4)
    assert record["pca_sha256"] == feat.sha256_of(tmp_path / "data" / feat.PCA_FILE)
    data = load_coco_data(tmp_path / "data")
    assert data["train_features"].shape[1] == 4 and load_coco_data(
        tmp_path / "data", pca_features=False)["train_features"].shape[1] == 2048

    pipeline.train(tmp_path / "data", tmp_path / "model", {"cell_type": "rnn", "num_epochs": 1, "hidden_dim": 8,
                                                           "wordvec_dim": 8, "batch_size": 4})
    photos = sorted((tmp_path / "photos").glob("*.png"))[:2]
    with pytest.raises(registry.EncoderError, match="from the weights file resnet50.pt .*pass it with --weights"):
        captioner.caption_files(tmp_path / "model", photos)
    (tmp_path / "other.pt").write_bytes(resnet50_file.read_bytes() + b"")
    rows = captioner.caption_files(tmp_path / "model", photos, weights=tmp_path / "other.pt")
    assert [r["image"] for r in rows] == [str(p) for p in photos]
    model, _ = checkpoints.load_model(checkpoints.model_base(tmp_path / "model"))
    x = captioner.compute_features(photos[:1], tmp_path / "data", True, model, weights=resnet50_file)
    split = "train" if photos[0].name in data["train_urls"][0] else "val"
    i = next(i for i, u in enumerate(data[f"{split}_urls"]) if u.endswith("/" + photos[0].name))
    np.testing.assert_allclose(x[0], data[f"{split}_features"][i], rtol=1e-5, atol=1e-5)


def test_pca_none_keeps_the_features_as_they_are(tmp_path, capsys):
    from capmodel.coco_utils import load_coco_data

    photo_folder_with_csv(tmp_path)
    code = main(["data", "from-folder", str(tmp_path / "photos"), str(tmp_path / "captions.csv"),
                 str(tmp_path / "data"), "--pca", "none", "--image-size", "32"])
    assert code == 0, capsys.readouterr().err
    record = feat.read_record(tmp_path / "data")
    assert record["pca_file"] is None and record["mean"] is None and record["pca_dim"] == 2328
    assert not (tmp_path / "data" / feat.PCA_FILE).exists()
    pca, fc7 = load_coco_data(tmp_path / "data"), load_coco_data(tmp_path / "data", pca_features=False)
    assert np.array_equal(pca["train_features"], fc7["train_features"])


@pytest.mark.parametrize("args, message", [
    (["--encoder", "resnet50", "--image-size", "32"], "--image-size applies to the randconv encoder only"),
    (["--pca", "0"], "argument --pca: must be integer >= 1, got '0'"),
    (["--weights", "w.pt"], "--weights: encoder randconv has fixed random filters"),
    (["--encoder", "nope"], "argument --encoder: invalid choice: 'nope'"),
])
def test_bad_encoder_flags_give_one_line_and_no_output(args, message, tmp_path, capsys):
    photo_folder_with_csv(tmp_path)
    try:
        code = main(["data", "from-folder", str(tmp_path / "photos"), str(tmp_path / "captions.csv"),
                     str(tmp_path / "data"), *args])
    except SystemExit as e:  # argparse's errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err
    assert not (tmp_path / "data").exists()


# ------------------------------------------- weights that are not usable weights: one line, nothing left


def _run_with_weights(tmp_path, command, name, weights):
    """capmodel data from-folder|features on a small photo folder with --encoder name --weights
    weights, in a fresh folder -> (exit code, stderr, what the run left beside its inputs)."""
    import contextlib
    import io

    run = tmp_path / "run"
    photo_folder_with_csv(run)
    out = run / ("data" if command == "from-folder" else "f.h5")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["data", command, str(run / "photos"), str(run / "captions.csv"), str(out), "--encoder", name,
                     "--weights", str(weights), "--no-progress"])
    left = sorted(p.name for p in run.iterdir() if p.name not in ("photos", "captions.csv"))
    return code, err.getvalue(), left


def _one_line(err):
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err.strip()


def _lite0_file():
    return importlib.import_module("capmodel.encoders.efficientnet").package_file(
        imagenet.LITE_NETWORKS["efficientnet-lite0"])


@pytest.mark.parametrize("name, key", [("resnet50", "layer1.0.conv1.weight"),
                                       ("efficientnet-lite0", "_blocks.3._expand_conv.weight")])
def test_nan_weights_are_refused_when_loading(name, key, resnet50_file, tmp_path):
    """Today's failure: NaN features, or PCA's 'Eigenvalues did not converge', with exit 0."""
    import torch

    sd = torch.load(resnet50_file if name == "resnet50" else _lite0_file(), weights_only=True)
    sd[key][0, 0, 0, 0] = float("nan")  # conv weights (out, in, k, k)
    torch.save(sd, tmp_path / "nan.pt")
    code, err, left = _run_with_weights(tmp_path, "from-folder", name, tmp_path / "nan.pt")
    assert code == 2 and left == []
    assert _one_line(err).endswith(f"--weights {tmp_path / 'nan.pt'}: broken weights: {key} holds NaN or infinite "
                                   "values")
    sd[key][0, 0, 0, 0] = float("inf")
    torch.save(sd, tmp_path / "inf.pt")
    with pytest.raises(registry.EncoderError, match=f"broken weights: {re.escape(key)} holds NaN or infinite"):
        registry.get_encoder(name, weights=tmp_path / "inf.pt")


@pytest.mark.parametrize("command", ["from-folder", "features"])
def test_integer_weights_give_one_line_and_leave_no_partial_file(command, resnet50_file, tmp_path):
    """Today's failure: a traceback from the first convolution, and a .partial work file left."""
    import torch

    sd = {k: v.to(torch.int32) for k, v in torch.load(resnet50_file, weights_only=True).items()}
    torch.save(sd, tmp_path / "int32.pt")
    code, err, left = _run_with_weights(tmp_path, command, "resnet50", tmp_path / "int32.pt")
    assert code == 2 and left == []
    assert _one_line(err).endswith(f"--weights {tmp_path / 'int32.pt'}: not torchvision resnet50 weights: the weights "
                                   "must be floating point, but bn1.bias (int32), bn1.running_mean (int32), "
                                   "bn1.running_var (int32), bn1.weight (int32), conv1.weight (int32) (and 262 more) "
                                   "are not")


def test_a_text_file_as_weights_gets_our_line_not_torchs_hint(tmp_path):
    """torch's message advises weights_only=False, which would run the file's code: never shown."""
    import argparse

    import torch

    (tmp_path / "notes.txt").write_text("image,caption\ncat.png,a cat\n")
    code, err, left = _run_with_weights(tmp_path, "from-folder", "resnet50", tmp_path / "notes.txt")
    assert code == 2 and left == [] and "weights_only=False" not in err and "weights_only` set to" not in err
    assert _one_line(err).endswith(f"--weights {tmp_path / 'notes.txt'}: not a PyTorch weights file "
                                   "(torch.save(model.state_dict(), FILE) writes a zip archive; this file starts "
                                   "with b'imag')")
    torch.save({"conv1.weight": argparse.Namespace(x=1)}, tmp_path / "object.pt")
    with pytest.raises(registry.EncoderError) as e:
        registry.get_encoder("efficientnet-lite0", weights=tmp_path / "object.pt")
    assert str(e.value) == (f"--weights {tmp_path / 'object.pt'}: torch's safe loader (weights_only) cannot read it: "
                            "it holds a argparse.Namespace object; only tensors and plain containers are read")


def test_non_finite_features_are_refused_where_they_are_made(resnet50_file, tmp_path, pictures):
    """Finite weights whose features overflow are refused when the encoder is made (a probe
    picture), before any file; features that come out non-finite in extract() are refused there."""
    import torch

    from capmodel.encoders import torchnets

    sd = torch.load(resnet50_file, weights_only=True)
    sd["layer4.2.bn3.weight"].fill_(3e38)  # finite, but the block's output overflows float32
    sd["layer4.2.bn3.bias"].fill_(3e38)
    torch.save(sd, tmp_path / "overflow.pt")
    code, err, left = _run_with_weights(tmp_path, "from-folder", "resnet50", tmp_path / "overflow.pt")
    assert code == 2 and left == []
    assert _one_line(err).endswith(f"encoder resnet50: its weights (--weights {tmp_path / 'overflow.pt'}) give "
                                   "features that are not finite (NaN or infinite) for 1 of 1 pictures; the weights "
                                   "are broken")

    sd = torch.load(resnet50_file, weights_only=True)
    sd["bn1.running_var"][0] = -1.0  # NaN after the first batch norm: made here without load()'s checks
    enc = torchnets.TorchEncoder(imagenet.NETWORKS["resnet50"], sd, None, "0" * 64)
    x = np.stack([enc.preprocess(folder.open_rgb(p)) for p in pictures])
    for grid in (None, 2):
        with pytest.raises(registry.EncoderError, match=r"^encoder resnet50: its weights \(sha256 0+\) give features "
                                                        r"that are not finite \(NaN or infinite\) for 3 of 3 pictures"):
            enc.extract(x, grid=grid)
    with pytest.raises(registry.EncoderError, match="broken weights: bn1.running_var holds negative batch-norm"):
        torch.save(sd, tmp_path / "negative.pt")
        registry.get_encoder("resnet50", weights=tmp_path / "negative.pt")
