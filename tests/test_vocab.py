"""Tests of capmodel.vocab: building a vocabulary and encoding captions the CS231n way."""

import numpy as np
import pytest

from capmodel.vocab import build_vocab, encode_captions, tokenize


def test_tokenize_lowercases_and_drops_punctuation():
    assert tokenize("A red Ball, next to: a BOX!") == ["a", "red", "ball", "next", "to", "a", "box"]


def test_build_vocab_specials_first_then_by_count_and_min_count():
    w2i, i2w = build_vocab(["a cat", "a dog", "a cat sat"], min_count=2)
    assert i2w == ["<NULL>", "<START>", "<END>", "<UNK>", "a", "cat"]
    assert all(w2i[w] == i for i, w in enumerate(i2w))


def test_encode_pads_truncates_and_maps_unknown_words():
    w2i, _ = build_vocab(["a cat"], min_count=1)
    long = " ".join(["cat"] * 20)
    enc = encode_captions(["a dog", long], w2i)
    assert enc.dtype == np.int32 and enc.shape == (2, 17)
    assert enc[0].tolist()[:5] == [1, w2i["a"], 3, 2, 0]
    assert enc[1].tolist() == [1] + [w2i["cat"]] * 15 + [2]  # 15 words + <END>, like CS231n


def test_encode_needs_the_special_tokens():
    with pytest.raises(ValueError, match="missing the special token <UNK>"):
        encode_captions(["a"], {"<NULL>": 0, "<START>": 1, "<END>": 2, "a": 3})


@pytest.mark.parametrize("caption, words", [
    ("A café by the Straße.", ["a", "café", "by", "the", "straße"]),
    ("cafe\u0301 and café", ["café", "and", "café"]),  # combining accent and composed letter: one word
    ("ＦＵＬＬ width", ["full", "width"]),
    ("Один кот", ["один", "кот"]),
    ("赤い車", ["赤", "い", "車"]),  # unspaced scripts: one word per character
    ("the dog's ball_2", ["the", "dog's", "ball", "2"]),
])
def test_words_of_any_script_are_kept(caption, words):
    assert tokenize(caption) == words


def test_ascii_captions_tokenize_as_before():
    """On ASCII text the tokens are CS231n's [a-z0-9]+(?:'[a-z]+)? of the lower-cased text, so
    the shapes and COCO vocabularies do not change."""
    import re
    import string

    rng = np.random.default_rng(0)
    alphabet = np.array(list(string.ascii_letters + string.digits + " '_-.,!\t"))
    for _ in range(2000):
        text = "".join(rng.choice(alphabet, size=rng.integers(0, 40)))
        assert tokenize(text) == re.findall(r"[a-z0-9]+(?:'[a-z]+)?", text.lower()), text


@pytest.mark.parametrize("caption", [
    "एक लाल गेंद और कुत्ता",  # Devanagari: vowel signs, anusvara, virama
    "একটি লাল বল",  # Bengali
    "ஒரு சிவப்பு பந்து",  # Tamil
    "แมว สีดำ",  # Thai: vowel and tone marks
    "قِطَّةٌ سَوْدَاءُ",  # vocalised Arabic
    "חָתוּל שָׁחֹר",  # vocalised Hebrew
    "İstanbul'da bir kedi",  # Turkish İ lower-cases to i + a combining dot
    "می‌خواهم",  # Persian: a zero-width non-joiner inside the word
])
def test_words_with_combining_marks_stay_whole(caption):
    import unicodedata

    words = tokenize(caption)
    assert words == unicodedata.normalize("NFKC", caption).lower().split()  # one word per space-separated unit
    assert all(unicodedata.category(w[0])[0] in "LN" for w in words)  # a mark never starts a word


def test_a_mark_or_joiner_alone_is_no_word():
    assert tokenize("a \u0301 \u200c b") == ["a", "b"]
