"""Tests of capmodel.metrics: the coco-caption wiring checked against hand-computed values."""

import contextlib
import math
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from capmodel import metrics

JAVA = [pytest.param(True, marks=pytest.mark.slow, id="True"), False] if shutil.which("java") else [False]  # JVMs: seconds


@pytest.mark.parametrize("use_java", JAVA)
def test_bleu_by_hand(use_java):
    # candidate 'a b x d' vs reference 'a b c d': unigram precision 3/4, bigram 1/3,
    # trigram 0/2; equal lengths, so no brevity penalty.
    s = metrics.evaluate_captions({1: ["a b c d"]}, {1: "a b x d"}, use_java=use_java, metrics=("Bleu_1", "Bleu_2"))
    assert s["Bleu_1"] == pytest.approx(0.75, abs=1e-6)
    assert s["Bleu_2"] == pytest.approx(math.sqrt(0.75 / 3), abs=1e-6)
    # a correct but short candidate: every precision is 1, brevity penalty exp(1 - 5/4)
    s = metrics.evaluate_captions({1: ["a b c d e"]}, {1: "a b c d"}, use_java=use_java, metrics=("Bleu_4",))
    assert s["Bleu_4"] == pytest.approx(math.exp(1 - 5 / 4), abs=1e-6)


def test_corpus_level_not_averaged():
    # corpus BLEU-1 pools counts: (2 + 0) / (2 + 2) = 0.5, whatever the per-image scores
    s = metrics.evaluate_captions({1: ["a b"], 2: ["c d"]}, {1: "a b", 2: "x y"}, use_java=False, metrics=("Bleu_1",))
    assert s["Bleu_1"] == pytest.approx(0.5, abs=1e-6)


@pytest.mark.parametrize("use_java", JAVA)
def test_identical_captions_score_the_maximum(use_java):
    refs = {1: ["a red circle on the left", "a small red ball"], 2: ["two blue squares", "a pair of blue boxes"],
            3: ["a green triangle at the top", "a triangle that is green"]}
    perfect = metrics.evaluate_captions(refs, {k: v[0] for k, v in refs.items()}, use_java=use_java)
    worse = metrics.evaluate_captions(refs, {1: "a red circle", 2: "two squares", 3: "a green circle"},
                                      use_java=use_java)
    for name in ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L"):
        assert perfect[name] == pytest.approx(1.0, abs=1e-6)
    if use_java:
        assert perfect["METEOR"] == pytest.approx(1.0) and perfect["tokenizer"] == "ptb"
    for name in perfect:
        if name in metrics.METRIC_NAMES:
            assert perfect[name] > worse[name]


def test_without_java_falls_back_and_warns_once(monkeypatch, capsys):
    monkeypatch.setattr(metrics.shutil, "which", lambda name: None)
    s = metrics.evaluate_captions({1: ["A red ball."]}, {1: "a red, ball"})
    assert s["tokenizer"] == "simple" and s["skipped"] == ["METEOR"] and "METEOR" not in s
    assert s["Bleu_1"] == pytest.approx(1.0, abs=1e-6)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "java not found" in err


@contextlib.contextmanager
def read_only(directory):
    """Make a directory unwritable even for root (immutable flag, else a read-only bind
    mount); yields False when neither is possible (not root)."""
    d = str(directory)
    undo = None
    if subprocess.run(["chattr", "+i", d], capture_output=True).returncode == 0:
        undo = ["chattr", "-i", d]
    elif subprocess.run(["mount", "--bind", d, d], capture_output=True).returncode == 0:
        if subprocess.run(["mount", "-o", "remount,ro,bind", d], capture_output=True).returncode == 0:
            undo = ["umount", d]
        else:
            subprocess.run(["umount", d])
    try:
        yield undo is not None
    finally:
        if undo:
            subprocess.run(undo, check=True)


@pytest.mark.skipif(not shutil.which("java"), reason="the PTB tokenizer needs java")
def test_ptb_tokenizer_works_from_a_read_only_install():
    from pycocoevalcap.tokenizer import ptbtokenizer

    pkg = Path(ptbtokenizer.__file__).parent
    before = sorted(os.listdir(pkg))
    with read_only(pkg) as locked:
        if locked:  # the upstream wrapper writes its temp file there and fails
            with pytest.raises(OSError):
                ptbtokenizer.PTBTokenizer().tokenize({1: [{"caption": "x"}]})
        assert metrics.ptb_tokenize({1: ["A red Ball, left."], 2: ["Two BOXES."]}) == \
            {1: ["a red ball left"], 2: ["two boxes"]}
    assert sorted(os.listdir(pkg)) == before  # nothing written into the package directory


def test_mismatched_ids_and_empty_input():
    with pytest.raises(ValueError, match="same images"):
        metrics.evaluate_captions({1: ["a"]}, {2: "a"})
    with pytest.raises(ValueError, match="no captions"):
        metrics.evaluate_captions({}, {})


def test_most_frequent_caption_and_references(tiny_data):
    tiny_data["train_captions"][:5] = tiny_data["train_captions"][7]
    text = metrics.most_frequent_caption(tiny_data)
    words = [tiny_data["idx_to_word"][i] for i in tiny_data["train_captions"][7]]
    assert text == " ".join(words[1 : words.index("<END>")])  # the caption now written 6 times
    refs = metrics.references_by_image(tiny_data, "val", num_images=3)
    assert list(refs) == [0, 1, 2] and all(len(r) == 2 for r in refs.values())


def test_per_image_scores_rank_the_right_caption_first():
    refs = {1: ["a red circle on the left", "the red circle"], 2: ["two blue squares", "blue squares"],
            3: ["a green triangle at the top", "a green triangle"]}
    cands = {1: "a red circle on the left", 2: "a yellow star", 3: "a green triangle"}
    s = metrics.evaluate_captions(refs, cands, use_java=False, metrics=("Bleu_4", "ROUGE_L", "CIDEr"))
    cider = {k: v["CIDEr"] for k, v in s["per_image"].items()}
    assert set(s["per_image"]) == {1, 2, 3} and cider[2] == 0.0 and cider[1] > 0 and cider[3] > 0
    assert s["CIDEr"] == pytest.approx(sum(cider.values()) / 3)  # CIDEr-D is the mean over images
    assert s["per_image"][2]["ROUGE_L"] == 0.0 and s["per_image"][1]["ROUGE_L"] == pytest.approx(1.0)
