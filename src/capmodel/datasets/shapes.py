"""The embedded shapes dataset: a learnable captioning task generated offline.

Each 64x64 RGB image shows one to three objects (circle, square, triangle or diamond;
six colours; small or large; placed on a 3x3 grid with jitter) on a textured
background. Five reference captions per image come from a small grammar with
paraphrases: synonyms, optional adjectives, positions, spatial relations between
objects, counts. Some references are longer than 15 words and are truncated as CS231n
did. The result is written in the CS231n on-disk format (capmodel.datasets.format), with
the images under images/ and the feature extractor's record (capmodel.datasets.features).

For attention models it also holds a grid of region features (format.grid_file): the
random-conv encoder's second layer (16 x 16 at 64 pixels, 128 channels) average-pooled to
DEFAULT_GRID x DEFAULT_GRID regions, its 128 channels standardised over the train regions
(features.fit_grid_transform; no PCA by default: 128 channels are already narrow, and a PCA
keeping all of them would only rotate them). The other files are the same bytes with or
without the grid.

Everything is drawn from np.random.default_rng([seed, split]), so a seed gives the same
images, captions and HDF5 bytes on every run. The val images, their captions' text and
their fc7 features do not depend on the number of training images; the vocabulary (so the
caption ids) and the PCA (fitted on train) do.
"""

from pathlib import Path

import numpy as np

from capmodel.datasets import features as feat
from capmodel.datasets import format as fmt
from capmodel.encoders import randconv
from capmodel.progress import track
from capmodel.vocab import build_vocab, encode_captions

SIZE = 64
MAP_SIDE = randconv.map_side(SIZE)  # 16: the largest grid
DEFAULT_GRID = 4  # 4 x 4 regions of 16 x 16 pixels each; None: no grid
DEFAULT_GRID_PCA = None  # the 128 channels, standardised
COLORS = {  # name -> (RGB, rare synonym)
    "red": ((220, 40, 40), "crimson"),
    "green": ((40, 180, 60), "lime"),
    "blue": ((50, 80, 230), "azure"),
    "yellow": ((235, 215, 40), "golden"),
    "purple": ((150, 60, 190), "violet"),
    "orange": ((245, 140, 20), "amber"),
}
SHAPES = {  # name -> (plural, common synonyms)
    "circle": ("circles", ("ball", "circle", "circle")),
    "square": ("squares", ("square", "box", "square")),
    "triangle": ("triangles", ("triangle", "triangle")),
    "diamond": ("diamonds", ("diamond", "diamond", "rhombus")),
}
SIZES = {"small": ((5, 6), ("small", "small", "little", "tiny")), "large": ((9, 10), ("large", "big", "large"))}
BACKGROUNDS = {"black": (25, 25, 25), "white": (230, 230, 230), "gray": (120, 120, 120), "navy": (25, 30, 80)}
CELL_CENTERS = (11, 32, 53)
POSITIONS = {
    (0, 0): "in the top left corner", (0, 1): "at the top", (0, 2): "in the top right corner",
    (1, 0): "on the left", (1, 1): "in the center", (1, 2): "on the right",
    (2, 0): "in the bottom left corner", (2, 1): "at the bottom", (2, 2): "in the bottom right corner",
}
RARE_SYNONYM_P = 0.001  # rare words fall under the vocabulary's min_count -> <UNK>


# ------------------------------------------------------------------- scenes


def sample_scene(rng):
    """A random scene: background name, texture, and 1-3 objects on distinct grid cells."""
    n = int(rng.choice([1, 2, 3], p=[0.35, 0.4, 0.25]))
    cells = rng.choice(9, size=n, replace=False)
    objects = []
    for c in cells:
        row, col = divmod(int(c), 3)
        objects.append({
            "shape": str(rng.choice(list(SHAPES))),
            "color": str(rng.choice(list(COLORS))),
            "size": str(rng.choice(list(SIZES))),
            "row": row, "col": col,
            "dx": int(rng.integers(-3, 4)), "dy": int(rng.integers(-3, 4)),
            "jitter": rng.integers(-20, 21, size=3).tolist(),
        })
    return {
        "background": str(rng.choice(list(BACKGROUNDS))),
        "gradient": rng.uniform(-25, 25, size=2).tolist(),
        "noise": float(rng.uniform(0, 12)),
        "noise_seed": int(rng.integers(2**31)),
        "objects": objects,
    }


def _object_mask(shape, cx, cy, r, yy, xx):
    dx, dy = xx - cx, yy - cy
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return (np.abs(dx) <= r * 0.85) & (np.abs(dy) <= r * 0.85)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= r * 1.1
    # triangle pointing up: apex at the top, base at the bottom
    return (dy <= r) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.55)


def draw(scene):
    """Render a scene to a uint8 image of shape (64, 64, 3)."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    base = np.array(BACKGROUNDS[scene["background"]], dtype=np.float32)
    gx, gy = scene["gradient"]
    img = base + ((xx - SIZE / 2) * gx / SIZE + (yy - SIZE / 2) * gy / SIZE)[..., None]
    noise_rng = np.random.default_rng(scene["noise_seed"])
    img = img + noise_rng.normal(0, scene["noise"], size=(SIZE, SIZE, 1)).astype(np.float32)
    for o in scene["objects"]:
        r = SIZES[o["size"]][0][0] + (o["dx"] % 2)
        cx = CELL_CENTERS[o["col"]] + o["dx"]
        cy = CELL_CENTERS[o["row"]] + o["dy"]
        mask = _object_mask(o["shape"], cx, cy, r, yy, xx)
        color = np.clip(np.array(COLORS[o["color"]][0]) + o["jitter"], 0, 255)
        img[mask] = color
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------- captions


def _article(word):
    return "an" if word[0] in "aeiou" else "a"


def _noun_phrase(o, rng, with_size=None, with_article=True):
    """'a small red circle', 'a big blue box', 'a purple triangle', ..."""
    color = o["color"] if rng.random() > RARE_SYNONYM_P else COLORS[o["color"]][1]
    shape = str(rng.choice(SHAPES[o["shape"]][1]))
    if with_size is None:
        with_size = rng.random() < 0.7
    words = [str(rng.choice(SIZES[o["size"]][1]))] if with_size else []
    words += [color, shape]
    phrase = " ".join(words)
    return f"{_article(phrase)} {phrase}" if with_article else phrase


def _relation(a, b):
    """How object a stands relative to object b, or None if they share a cell row and column."""
    options = []
    if a["col"] < b["col"]:
        options.append("to the left of")
    if a["col"] > b["col"]:
        options.append("to the right of")
    if a["row"] < b["row"]:
        options.append("above")
    if a["row"] > b["row"]:
        options.append("below")
    return options


def captions_for(scene, rng, k=5):
    """k distinct reference captions for a scene, drawn from the grammar's templates."""
    objs = scene["objects"]
    bg = scene["background"]
    np_ = lambda o, **kw: _noun_phrase(o, rng, **kw)
    pos = lambda o: POSITIONS[(o["row"], o["col"])]
    templates = []
    if len(objs) == 1:
        (o,) = objs
        templates += [
            lambda: np_(o),
            lambda: f"{np_(o)} {pos(o)}",
            lambda: f"there is {np_(o)} on a {bg} background",
            lambda: f"{_article(bg)} {bg} image with {np_(o)} {pos(o)}",
            lambda: f"an image of {np_(o)}",
            lambda: f"a single {o['color']} {o['shape']} {pos(o)}",
            lambda: f"one {o['size']} {o['shape']} that is {o['color']}",
        ]
    else:
        a, b = objs[0], objs[1]
        rels = _relation(a, b)
        if len(objs) == 2:
            templates += [
                lambda: f"{np_(a)} and {np_(b)}",
                lambda: f"there is {np_(a)} and {np_(b)} on a {bg} background",
                lambda: f"two shapes {np_(a)} and {np_(b)}",
                lambda: f"{np_(a)} {pos(a)} and {np_(b)} {pos(b)}",
            ]
            if a["color"] == b["color"]:
                templates.append(lambda: f"two {a['color']} shapes a {a['shape']} and a {b['shape']}")
            if a["shape"] == b["shape"]:
                plural = SHAPES[a["shape"]][0]
                templates.append(lambda: f"two {plural} one {a['color']} and one {b['color']}")
        else:
            c = objs[2]
            templates += [
                lambda: f"{np_(a)} {np_(b)} and {np_(c)}",
                lambda: f"three shapes on a {bg} background",
                lambda: f"three shapes {np_(a, with_size=False)} {np_(b, with_size=False)} and {np_(c, with_size=False)}",
                lambda: f"there are three objects including {np_(a)}",
                lambda: f"{np_(a)} {pos(a)} {np_(b)} and {np_(c)}",
            ]
            colors = [o["color"] for o in objs]
            for col in set(colors):
                if colors.count(col) == 3:
                    templates.append(lambda col=col: f"three {col} shapes")
                elif colors.count(col) == 2:
                    other = next(o for o in objs if o["color"] != col)
                    templates.append(lambda col=col, other=other: f"two {col} shapes and {np_(other)}")
        for rel in rels:
            inverse = {"to the left of": "to the right of", "to the right of": "to the left of",
                       "above": "below", "below": "above"}[rel]
            templates.append(lambda rel=rel: f"{np_(a)} {rel} {np_(b)}")
            templates.append(lambda inv=inverse: f"{np_(b)} {inv} {np_(a)}")
    out, tries = [], 0
    order = rng.permutation(len(templates))
    while len(out) < k:
        t = templates[order[tries % len(templates)]]
        caption = t()
        tries += 1
        if caption not in out or tries > 4 * len(templates):
            out.append(caption)
    return out


# ------------------------------------------------------------------ dataset


def generate_split(num_images, seed, split):
    """Scenes, images (N, 64, 64, 3) uint8 and 5 captions per image for one split."""
    rng = np.random.default_rng([seed, fmt.SPLITS.index(split)])
    scenes = [sample_scene(rng) for _ in range(num_images)]
    images = np.stack([draw(s) for s in scenes]) if scenes else np.zeros((0, SIZE, SIZE, 3), np.uint8)
    captions = [captions_for(s, rng) for s in scenes]
    return scenes, images, captions


def _write_png(path, image):
    from PIL import Image

    Image.fromarray(image).save(path, format="PNG", optimize=False)


def generate(out_dir, num_train=4000, num_val=500, seed=0, min_count=5, grid=DEFAULT_GRID,
             grid_pca=DEFAULT_GRID_PCA):
    """Generate the shapes dataset into out_dir (replaced atomically when complete).

    Inputs:
    - out_dir: Dataset directory to create
    - num_train, num_val: Number of images per split (five captions each)
    - seed: Seed for everything random
    - min_count: Vocabulary threshold; rarer training words become <UNK>
    - grid: Side G of the grid of region features (1 to MAP_SIDE), or None for none
    - grid_pca: Components K of a PCA fitted on the train regions (K >= 128 keeps them all,
      centred and rotated), or None to keep the 128 channels; either way each channel is then
      standardised (zero mean, unit variance over the train regions)

    Returns a dict of summary statistics (image, caption and vocabulary counts).
    """
    if num_train < 1 or num_val < 1:
        raise ValueError(f"num_train and num_val must be >= 1, got {num_train} and {num_val}")
    randconv.RandConvEncoder(SIZE).check_grid(grid)
    if grid_pca is not None and grid_pca < 1:
        raise ValueError(f"grid_pca must be a positive number of components or None, got {grid_pca}")
    fmt.check_writable_dataset_dir(out_dir)  # before a minute of work, not after
    out_dir = Path(out_dir).resolve()
    splits = {s: generate_split(n, seed, s) for s, n in (("train", num_train), ("val", num_val))}
    train_text = [c for caps in splits["train"][2] for c in caps]
    word_to_idx, idx_to_word = build_vocab(train_text, min_count=min_count)
    captions, image_idxs, fc7, urls, images, regions = {}, {}, {}, {}, {}, {}
    for s, (_, imgs, caps) in splits.items():
        flat = [c for cs in caps for c in cs]
        captions[s] = encode_captions(flat, word_to_idx)
        image_idxs[s] = np.repeat(np.arange(len(caps), dtype=np.int32), [len(cs) for cs in caps])
        chunks = range(0, len(imgs), 256)  # extract()'s own batch: the same arithmetic as in one call
        out = [feat.extract(imgs[i : i + 256], grid=grid) for i in track(
            chunks, len(chunks), f"{s} features", unit="chunks of 256 images")]
        if grid is None:
            fc7[s] = np.concatenate(out)
        else:
            fc7[s] = np.concatenate([f for f, _ in out])
            regions[s] = np.concatenate([feat.grid_project(r) for _, r in out])  # float16, as a grid file
        urls[s] = [out_dir / "images" / s / f"{i:06d}.png" for i in range(len(imgs))]  # stored relative
        images[s] = imgs
    mean, comps = feat.fit_pca(fc7["train"], dim=min(fmt.PCA_DIM, fc7["train"].shape[1]))
    pca = {s: feat.pca_project(fc7[s], mean, comps, fmt.PCA_DIM) for s in fc7}
    grid_mean = grid_comps = None
    if grid is not None:  # one row per train region
        train = regions["train"].reshape(-1, randconv.GRID_DIM)
        dim = None if grid_pca is None else min(grid_pca, len(train), randconv.GRID_DIM)
        grid_mean, grid_comps = feat.fit_grid_transform(lambda: iter([train]), len(train), randconv.GRID_DIM, dim)
        regions = {s: feat.grid_project(r, grid_mean, grid_comps) for s, r in regions.items()}

    def add_images(tmp_dir):
        for s, imgs in images.items():
            d = Path(tmp_dir) / "images" / s
            d.mkdir(parents=True)
            for i, img in enumerate(imgs):
                _write_png(d / f"{i:06d}.png", img)
        # so that `capmodel caption` computes the features of new images the same way
        feat.write_record(tmp_dir, SIZE, mean, comps, fmt.PCA_DIM, created_by="capmodel data shapes", grid=grid,
                          grid_mean=grid_mean, grid_components=grid_comps)

    fmt.write_dataset(out_dir, captions, image_idxs, fc7, pca, urls, idx_to_word, extra=add_images,
                      grids=regions if grid is not None else None)
    lengths = [len(c.split()) for c in train_text]
    return {
        "train_images": num_train, "val_images": num_val,
        "train_captions": len(train_text), "vocab_size": len(idx_to_word),
        "truncated_captions": int(sum(n > 15 for n in lengths)),
        "mean_words": float(np.mean(lengths)),
    }
