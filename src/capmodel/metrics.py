"""Caption metrics from the coco-caption toolkit (pycocoevalcap): BLEU-1..4, METEOR,
ROUGE-L and CIDEr-D, corpus level, each candidate against all references of its image.

Tokenisation: with ``java`` on the PATH, the toolkit's own Stanford PTB tokenizer jar is
run (its temporary file goes to the system temp directory, not the package directory,
so a read-only install works) and METEOR is computed. Without java, a documented
pure-Python tokenizer is used (lower-case, split on anything that is not a letter, digit
or apostrophe, which drops the same punctuation) and METEOR is skipped with one warning.
SPICE is never computed: it downloads Stanford CoreNLP models on first use, which is not
possible offline.
"""

import contextlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter

import numpy as np

from capmodel.coco_utils import decode_captions
from capmodel.models import image_inputs
from capmodel.vocab import tokenize

METRIC_NAMES = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")


def require_toolkit():
    """Raise ValueError with the install command when pycocoevalcap is missing."""
    import importlib.util

    if importlib.util.find_spec("pycocoevalcap") is None:
        raise ValueError("caption metrics need the coco-caption toolkit: pip install 'capmodel[metrics]' "
                         "(or pip install pycocoevalcap)")


def one_line(text):
    """Caption text on one line: every line or paragraph separator (\\r, \\f, U+2028, ...)
    and any run of white space becomes one space, so a tokenizer that reads line by line
    sees exactly one line per caption."""
    return " ".join(str(text).split())


def java_available():
    return shutil.which("java") is not None


def simple_tokenize(text):
    """The fallback tokenizer: lower-case words, punctuation dropped (capmodel.vocab.tokenize)."""
    return " ".join(tokenize(text))


def ptb_tokenize(captions_for_image):
    """Tokenize {id: [str, ...]} with the toolkit's PTB tokenizer jar -> {id: [str, ...]}."""
    from pycocoevalcap.tokenizer import ptbtokenizer as ptb

    jar = os.path.join(os.path.dirname(os.path.abspath(ptb.__file__)), ptb.STANFORD_CORENLP_3_4_1_JAR)
    ids = [k for k, v in captions_for_image.items() for _ in v]
    text = "\n".join(one_line(c) for v in captions_for_image.values() for c in v)
    with tempfile.TemporaryDirectory() as tmp:  # the tokenizer reads a file; the directory goes with it
        path = os.path.join(tmp, "captions.txt")
        with open(path, "w") as f:
            f.write(text)
        out = subprocess.run(["java", "-cp", jar, "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines",
                              "-lowerCase", path], capture_output=True, check=True).stdout.decode()
    lines = out.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) != len(ids):  # never score a caption against another image's references
        raise RuntimeError(f"the PTB tokenizer returned {len(lines)} lines for {len(ids)} captions")
    result = {}
    for k, line in zip(ids, lines):
        words = [w for w in line.rstrip().split(" ") if w not in ptb.PUNCTUATIONS]
        result.setdefault(k, []).append(" ".join(words))
    return result


def evaluate_captions(references, candidates, use_java=None, metrics=METRIC_NAMES):
    """Corpus-level caption metrics.

    Inputs:
    - references: {image id: [reference caption strings]}
    - candidates: {image id: generated caption string}, same ids
    - use_java: force (True) or forbid (False) the PTB tokenizer and METEOR; None = if found
    - metrics: which of METRIC_NAMES to compute

    Returns a dict with the requested metric values plus 'tokenizer' ('ptb' or 'simple'),
    'num_images', 'skipped' (metrics that could not be computed) and 'per_image': {image
    id: {metric: score}} for BLEU-4, ROUGE-L and CIDEr-D (those the toolkit scores per
    image; the corpus BLEU is not the mean of the per-image values).
    """
    require_toolkit()
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    if set(references) != set(candidates):
        missing = sorted(set(references) ^ set(candidates), key=str)[:5]
        raise ValueError(f"references and candidates must cover the same images; differing ids: {missing}")
    if not references:
        raise ValueError("no captions to evaluate")
    unknown = sorted(set(metrics) - set(METRIC_NAMES))
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {METRIC_NAMES}")
    java = java_available() if use_java is None else use_java
    skipped = []
    if java:
        gts = ptb_tokenize({k: list(v) for k, v in references.items()})
        res = ptb_tokenize({k: [v] for k, v in candidates.items()})
        tokenizer = "ptb"
    else:
        gts = {k: [simple_tokenize(c) for c in v] for k, v in references.items()}
        res = {k: [simple_tokenize(v)] for k, v in candidates.items()}
        tokenizer = "simple"
    out = {}
    ids = list(gts)  # the toolkit's scorers return per-image scores in this order
    per_image = {k: {} for k in ids}

    def keep(name, scores):
        for k, v in zip(ids, scores):
            per_image[k][name] = float(v)

    if any(m.startswith("Bleu") for m in metrics):
        with contextlib.redirect_stdout(io.StringIO()):  # the scorer prints its internals
            bleu, bleu_each = Bleu(4).compute_score(gts, res)
        out.update({f"Bleu_{n}": float(bleu[n - 1]) for n in range(1, 5) if f"Bleu_{n}" in metrics})
        if "Bleu_4" in metrics:
            keep("Bleu_4", bleu_each[3])
    if "METEOR" in metrics:
        if java:
            from pycocoevalcap.meteor.meteor import Meteor

            meteor = Meteor()
            try:
                out["METEOR"] = float(meteor.compute_score(gts, res)[0])
            finally:
                meteor.meteor_p.kill()
                meteor.meteor_p.wait()
        else:
            skipped.append("METEOR")
            why = "java not found" if use_java is None else "java disabled"
            print(f"warning: {why}: using the pure-Python tokenizer and skipping METEOR", file=sys.stderr)
    if "ROUGE_L" in metrics:
        score, each = Rouge().compute_score(gts, res)
        out["ROUGE_L"] = float(score)
        keep("ROUGE_L", each)
    if "CIDEr" in metrics:
        score, each = Cider().compute_score(gts, res)
        out["CIDEr"] = float(score)
        keep("CIDEr", each)
    out.update({"tokenizer": tokenizer, "num_images": len(references), "skipped": skipped, "per_image": per_image})
    return out


def references_by_image(data, split, num_images=None):
    """{image index: [reference strings]} for the first num_images images of a split: the
    data set's stored references (<split>_references, the words people wrote) when it has
    them, else its captions decoded through the vocabulary."""
    if f"{split}_captions" not in data:
        raise ValueError(f"the data set has no {split} split")
    image_idxs = data[f"{split}_image_idxs"]
    ids = np.unique(image_idxs)[:num_images] if num_images else np.unique(image_idxs)
    stored = data.get(f"{split}_references")
    if stored is not None:
        return {int(i): list(stored[int(i)]) for i in ids}
    rows = np.flatnonzero(np.isin(image_idxs, ids))  # decode only the captions of those images
    texts = decode_captions(data[f"{split}_captions"][rows], data["idx_to_word"], strip_special=True)
    refs = {int(i): [] for i in ids}
    for i, t in zip(image_idxs[rows].tolist(), texts):
        refs[i].append(t)
    return refs


def most_frequent_caption(data):
    """The most frequent training caption (as text): the baseline every model must beat."""
    texts = decode_captions(data["train_captions"], data["idx_to_word"], strip_special=True)
    counts = Counter(texts)
    return min(counts, key=lambda t: (-counts[t], t))


def score_split(model, data, split, metric, num_images=200, max_length=16, refs=None):
    """BLEU-4 ('bleu4') or CIDEr-D ('cider') of greedy captions on a split, without java
    (fast enough to run after every epoch). refs: references_by_image's result, when the
    caller already has it (the solver computes it once, not every epoch)."""
    if refs is None:
        refs = references_by_image(data, split, num_images)
    ids = np.array(list(refs))
    caps = model.sample(max_length=max_length, **image_inputs(model, data, split, ids))
    texts = decode_captions(caps, data["idx_to_word"], strip_special=True)
    name = {"bleu4": "Bleu_4", "cider": "CIDEr"}[metric]
    cands = dict(zip(ids.tolist(), texts))
    return evaluate_captions(refs, cands, use_java=False, metrics=(name,))[name]
