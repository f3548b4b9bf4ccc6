"""Test fixtures: random captioning data in memory (the load_coco_data dict format),
folders of drawn photos and random ResNet-50 weights files.

For tests and debugging: nothing is learnable beyond memorising, use the shapes dataset
(capmodel.datasets.shapes) for a real task.
"""

import sys

import numpy as np

from capmodel.vocab import CAPTION_LENGTH, SPECIAL_TOKENS


def random_data(num_images=20, captions_per_image=2, num_val_images=6, D=16, num_words=12, seed=0):
    """A data dict like load_coco_data's: random float32 features and random captions of
    3 to 15 words over num_words words (w0, w1, ...), each image with its own captions."""
    rng = np.random.default_rng(seed)
    idx_to_word = list(SPECIAL_TOKENS) + [f"w{i}" for i in range(num_words)]
    V = len(idx_to_word)
    data = {"idx_to_word": idx_to_word, "word_to_idx": {w: i for i, w in enumerate(idx_to_word)}}
    for split, n_img in (("train", num_images), ("val", num_val_images)):
        n_cap = n_img * captions_per_image
        caps = np.zeros((n_cap, CAPTION_LENGTH), dtype=np.int32)
        for i in range(n_cap):
            length = rng.integers(3, CAPTION_LENGTH - 1)
            caps[i, 0] = 1
            caps[i, 1 : length + 1] = rng.integers(len(SPECIAL_TOKENS), V, size=length)
            caps[i, length + 1] = 2
        data[f"{split}_captions"] = caps
        data[f"{split}_image_idxs"] = np.repeat(np.arange(n_img), captions_per_image).astype(np.int32)
        data[f"{split}_features"] = rng.standard_normal((n_img, D)).astype(np.float32)
        data[f"{split}_urls"] = np.asarray([f"file:///{split}/{i}.png" for i in range(n_img)])
    return data


PHOTO_COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 80, 230)}
PHOTO_SHAPES = ("circle", "square")


def draw_photo(color, shape, side=40, background=(240, 240, 240)):
    """A uint8 (side, side, 3) picture of one coloured circle or square on a plain background."""
    yy, xx = np.mgrid[0:side, 0:side] - side / 2
    mask = xx**2 + yy**2 <= (side / 3) ** 2 if shape == "circle" else (abs(xx) <= side / 3) & (abs(yy) <= side / 3)
    img = np.empty((side, side, 3), np.uint8)
    img[:] = background
    img[mask] = PHOTO_COLORS[color]
    return img


def photo_folder(d, copies=2, side=40):
    """PNGs <color>_<shape>_<k>.png in folder d (3 colours x 2 shapes x copies, each copy 8
    pixels larger), for the own-data tests and examples; returns {name: [two captions]}."""
    from pathlib import Path

    from PIL import Image

    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    captions = {}
    for color in PHOTO_COLORS:
        for shape in PHOTO_SHAPES:
            for k in range(copies):
                name = f"{color}_{shape}_{k}.png"
                Image.fromarray(draw_photo(color, shape, side + 8 * k)).save(d / name)
                captions[name] = [f"a {color} {shape}", f"one {color} {shape} on a white background"]
    return dict(sorted(captions.items()))


def photo_folder_with_csv(d, folder="photos", csv_name="captions.csv"):
    """photo_folder(d / folder) plus a captions CSV (image,caption; no split column) in d."""
    from pathlib import Path

    captions = photo_folder(Path(d) / folder)
    lines = ["image,caption"] + [f"{name},{c}" for name, caps in captions.items() for c in caps]
    (Path(d) / csv_name).write_text("\n".join(lines) + "\n")
    return captions


def random_resnet50_file(path, seed):
    """Save a random state_dict with the keys and shapes of torchvision's resnet50 at path
    (as torch.save writes a state_dict; needs torch); returns path."""
    import torch

    from capmodel.encoders import torchnets

    torch.manual_seed(seed)
    sd = {k: torch.randn(s) * 0.05 if s else torch.tensor(0) for k, s in torchnets.resnet_shapes("resnet50").items()}
    for k in sd:
        if k.endswith("running_var"):
            sd[k] = sd[k].abs() + 1
    torch.save(sd, path)
    return path


class WithRegions:
    """A model with its regions bound, driven by capmodel.decoding's decoders the way
    decoding.decode(..., regions=) drives it (decoder(features, regions))."""

    def __init__(self, model, regions):
        self.model, self.regions, self.word_to_idx = model, regions, model.word_to_idx

    def decoder(self, features):
        return self.model.decoder(features, self.regions)


def resumable_train_cmd(data, out, ckpt, flags):
    """The `capmodel train` command line, in a fresh Python, of a run with checkpoints in
    ckpt and the given flags: what the kill-and-resume tests start, kill and start again."""
    return [sys.executable, "-m", "capmodel.app.cli", "train", "--data", str(data), "--out-dir", str(out),
            "--checkpoint-dir", str(ckpt), *flags]


def model_params(out):
    """The parameter arrays of the model.npz in the directory out, by name."""
    with np.load(out / "model.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
