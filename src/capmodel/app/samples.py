"""Samples files: the captions of a split (`capmodel sample`, `capmodel baseline`), read
back and scored (`capmodel evaluate`).

A samples file is a CSV with the columns image_idx, url, generated, references (an
image's reference captions joined by REF_SEP), with a JSON record beside it
(samples_record: the model, the data set and how the captions were decoded). Reports find
the pictures of a samples file through sample_image_urls.
"""

import sys
import time
from pathlib import Path

import numpy as np

from capmodel import checkpoints, metrics
from capmodel.app import memory
from capmodel.app import settings as S
from capmodel.app.pipeline import check_grid, read_settings_file
from capmodel.safety.outputs import check_output
from capmodel.app.tables import read_csv, write_csv
from capmodel.coco_utils import decode_captions, load_coco_data
from capmodel.datasets import format as fmt
from capmodel.models import image_inputs
from capmodel.progress import clock, track
from capmodel.safety.atomic import write_json
from capmodel.safety.jsonfile import read_json

REF_SEP = " ||| "
COLUMNS = ["image_idx", "url", "generated", "references"]


def samples_record(samples_csv):
    """Where `capmodel sample`/`baseline` record what they did: the CSV's .json sibling."""
    return Path(samples_csv).with_suffix(".json")


def sample_image_urls(record_json, entries):
    """Where to read the pictures of a samples file, for reports.

    The url column holds each image as its dataset's urls file does: a path relative to
    the dataset directory, or a URL (capmodel.datasets.format.image_location). They are
    resolved against the data_dir of the samples record (record_json); a relative data_dir
    is relative to the working directory, as it was when the samples were made (the run
    directory in the workflow), so a run directory moved or copied elsewhere keeps its pictures.

    Returns a list of http(s) or absolute file:// URLs, one per entry.
    """
    path = Path(record_json)
    record = read_json(path, "samples record")
    data_dir = record.get("data_dir") if isinstance(record, dict) else None
    if not isinstance(data_dir, str):
        raise ValueError(f"samples record {path} has no data_dir (a path string)")
    return fmt.image_locations(data_dir, entries)


def _check_samples_outputs(out_csv, inputs=()):
    check_output(out_csv, ".csv", inputs=inputs)
    check_output(samples_record(out_csv), ".json", kind="samples_record", inputs=inputs)


def caption_images(model, data, split, image_idxs, record, batch_size=500):
    """Captions of some images of a split, decoded as a decoding record says.

    Inputs:
    - model: a model of capmodel.models
    - data: dict from load_coco_data
    - split: 'train', 'val' or 'test'
    - image_idxs: Int array of shape (N,), images of the split
    - record: capmodel.app.settings.decode_record's dict (method, max_length and the
      method's settings)
    - batch_size: images decoded at once

    Returns:
    - captions: Int array of shape (N, max_length)
    """
    method = record["method"]
    options = {k: record[k] for k in S.METHOD_SETTINGS[method]}
    if method == "temperature":
        options["rng"] = np.random.default_rng(options.pop("seed"))
    captions = []
    batches = range(0, len(image_idxs), batch_size)
    for s in track(batches, len(batches), f"{method} decoding of {len(image_idxs)} {split} images", unit="batches"):
        inputs = image_inputs(model, data, split, image_idxs[s : s + batch_size])
        captions.append(model.sample(max_length=record["max_length"], method=method, **options, **inputs))
    return np.concatenate(captions) if captions else np.zeros((0, record["max_length"]), int)


def sample(model, data_dir, out_csv, settings=None, batch_size=500):
    """Caption the images of a split; write image_idx, url, generated, references as CSV,
    and the decoding record (settings and label) beside it (samples_record). The data set's
    regions are read only for a model that attends over them (refused first, in one line,
    when the data set has none)."""
    record = S.decode_record(settings or {})
    base = checkpoints.model_base(model)
    _check_samples_outputs(out_csv, inputs=(base.with_suffix(".npz"), base.with_suffix(".json")))
    fmt.check_split(data_dir, record["split"])
    model, meta = checkpoints.load_model(base)
    attends = bool(getattr(model, "uses_regions", False))  # the regions are read only for a model that needs them
    if attends:
        check_grid(data_dir, f"model {base}", getattr(model, "num_regions", None))
        memory.check_regions(data_dir)
    pca = meta.get("settings", {}).get("pca_features", True)
    data = load_coco_data(data_dir, pca_features=pca, regions=attends)
    if data["word_to_idx"] != model.word_to_idx:
        raise ValueError(f"the vocabulary of {data_dir} differs from the model's ({base}); "
                         "sample with the dataset the model was trained on")
    split = record["split"]
    refs = metrics.references_by_image(data, split, record["num_images"])
    ids = np.array(list(refs), dtype=np.int64)
    caps = caption_images(model, data, split, ids, record, batch_size)
    texts = decode_captions(caps, data["idx_to_word"], strip_special=True)
    urls = fmt.read_urls(data_dir, split)  # as stored: relative to data_dir (sample_image_urls)
    rows = [{"image_idx": int(i), "url": urls[i], "generated": t, "references": REF_SEP.join(refs[int(i)])}
            for i, t in zip(ids, texts)]
    write_csv(out_csv, rows, COLUMNS)
    write_json(samples_record(out_csv), {"kind": "samples_record", "model": str(base), "data_dir": str(data_dir),
                                         "decoding": record, "label": S.decode_label(record)})
    return rows


def baseline(data_dir, out_csv, split="val", num_images=None):
    """The most-frequent-training-caption baseline, written like sample()'s output."""
    _check_samples_outputs(out_csv)
    fmt.check_split(data_dir, split)
    data = load_coco_data(data_dir, regions=False)  # the baseline looks at no picture
    caption = metrics.most_frequent_caption(data)
    refs = metrics.references_by_image(data, split, num_images)
    urls = fmt.read_urls(data_dir, split)  # as stored: relative to data_dir (sample_image_urls)
    rows = [{"image_idx": i, "url": urls[i], "generated": caption, "references": REF_SEP.join(r)}
            for i, r in refs.items()]
    write_csv(out_csv, rows, COLUMNS)
    record = {"split": split, "method": "most_frequent_caption", "num_images": num_images}
    write_json(samples_record(out_csv), {"kind": "samples_record", "model": None, "data_dir": str(data_dir),
                                         "decoding": record, "label": "most frequent caption"})
    return caption


def read_samples(samples_csv):
    """{image_idx: (generated, [references])} from a samples CSV; errors name file and row."""
    path = Path(samples_csv)
    if path.is_dir():
        raise ValueError(f"samples file {path} is a directory; give the CSV from 'capmodel sample'")
    if not path.is_file():
        raise ValueError(f"samples file {path} does not exist (make it with 'capmodel sample')")
    try:
        rows = read_csv(path)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})")
    if not rows:
        raise ValueError(f"{path} has no captions to evaluate")
    for col in ("image_idx", "generated", "references"):
        if col not in rows[0]:
            raise ValueError(f"{path} has no column '{col}' (columns: {', '.join(rows[0])})")
    out = {}
    for n, r in enumerate(rows, start=2):  # row 1 is the header
        try:
            i = int(r["image_idx"])
        except (TypeError, ValueError):
            raise ValueError(f"{path}, row {n}: image_idx must be an integer, got {r['image_idx']!r}")
        if i in out:
            raise ValueError(f"{path}, row {n}: image_idx {i} appears twice")
        if r["generated"] is None or r["references"] is None:
            raise ValueError(f"{path}, row {n}: missing columns")
        refs = r["references"].split(REF_SEP)
        if not all(ref.strip() for ref in refs):
            raise ValueError(f"{path}, row {n}: empty reference caption (references are joined by '{REF_SEP.strip()}')")
        out[i] = (r["generated"], refs)
    return out


def evaluate(samples_csv, out_json, use_java=None, name=None, scores_csv=None):
    """Score a samples CSV with the coco-caption metrics; write them and the decoding
    record of the samples (when present) as JSON, and with scores_csv the per-image
    scores (image_idx, generated, Bleu_4, ROUGE_L, CIDEr) as CSV."""
    record_path = samples_record(samples_csv)
    inputs = (samples_csv, record_path)
    check_output(out_json, ".json", kind="metrics", inputs=inputs)
    if scores_csv is not None:
        check_output(scores_csv, ".csv", inputs=inputs + (out_json,))
    samples = read_samples(samples_csv)
    record = {}
    if record_path.exists():
        record = read_settings_file(record_path, "samples record")
    refs = {i: r for i, (_, r) in samples.items()}
    cands = {i: g for i, (g, _) in samples.items()}
    start = time.perf_counter()
    print(f"scoring the captions of {len(cands)} images ...", file=sys.stderr, flush=True)
    scores = metrics.evaluate_captions(refs, cands, use_java=use_java)
    print(f"scored in {clock(time.perf_counter() - start)}", file=sys.stderr, flush=True)
    per_image = scores.pop("per_image")
    result = {"kind": "metrics", "model": name or Path(samples_csv).parent.name, "samples": str(samples_csv), **scores,
              "settings": record.get("decoding", {}), "decoding": record.get("label", "")}
    if scores_csv is not None:
        names = [m for m in ("Bleu_4", "ROUGE_L", "CIDEr") if any(m in v for v in per_image.values())]
        write_csv(scores_csv, [{"image_idx": i, "generated": cands[i], **{m: f"{v[m]:.6f}" for m in names}}
                               for i, v in per_image.items()], ["image_idx", "generated", *names])
    write_json(out_json, result)
    return result
