"""The vocabulary contract: special tokens, building a vocabulary and encoding captions.

Every dataset, the model and the decoders import the special tokens from here.
"""

import functools
import re
import unicodedata
from collections import Counter

import numpy as np

NULL, START, END, UNK = "<NULL>", "<START>", "<END>", "<UNK>"
SPECIAL_TOKENS = (NULL, START, END, UNK)  # ids 0, 1, 2, 3 in every vocabulary we build
MAX_WORDS = 15  # CS231n keeps at most 15 words, so captions are 17 tokens with <START>/<END>
CAPTION_LENGTH = MAX_WORDS + 2


@functools.cache
def _word():
    """The regular expression of a word: a letter or digit of any script, then letters,
    digits and the characters that continue a word but never start one, with one apostrophe
    suffix ("dog's"). On ASCII text it is exactly [a-z0-9]+(?:'[a-z]+)?, the CS231n-style
    tokens of the shapes and COCO data, since none of those characters is ASCII: combining
    marks (Unicode categories Mn, Mc, Me: Devanagari and Bengali vowel signs, Thai tone
    marks, Arabic and Hebrew vowel points, the dot of a lower-cased Turkish İ), which
    Python's \\w leaves out, and the zero-width joiners written inside Persian and Indic
    words. Built on first use (a pass over Unicode's first two planes, about 40 ms)."""
    marks = [c for c in range(0x20000) if unicodedata.category(chr(c)).startswith("M")]
    marks += list(range(0xE0100, 0xE01F0))  # variation selectors supplement (Mn)
    ranges, start = [], marks[0]
    for prev, c in zip(marks, marks[1:] + [None]):
        if c != prev + 1:
            ranges.append(f"\\u{start:04x}-\\u{prev:04x}" if prev < 0x10000 else f"\\U{start:08x}-\\U{prev:08x}")
            start = c
    inside = "".join(ranges) + "\\u200c\\u200d"
    return re.compile(rf"[^\W_](?:[^\W_]|[{inside}])*(?:'[^\W\d_](?:[^\W\d_]|[{inside}])*)?")


# Scripts written without spaces between words (Han, Hiragana, Katakana): each character is
# one word, as character-level captioning of Chinese and Japanese does without a segmenter.
UNSPACED = re.compile(r"([\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff])")


def tokenize(caption):
    """Split a caption into lower-case words of any script, dropping punctuation; a
    combining mark stays in its word (see _word).

    The text is Unicode-normalised first (NFKC: "café" typed with a combining accent and
    with the composed letter is one word; full-width letters become plain ones), then
    lower-cased ("Straße" -> "straße"). Han and kana characters are one word each.
    """
    text = UNSPACED.sub(r" \1 ", unicodedata.normalize("NFKC", caption).lower())
    return _word().findall(text)


def build_vocab(captions, min_count=1):
    """Build a vocabulary from caption strings.

    Words seen fewer than min_count times are left out (they encode as <UNK>). Ids 0-3
    are <NULL>, <START>, <END>, <UNK>; the remaining words follow by decreasing count,
    ties broken alphabetically, so the result depends only on the captions.

    Inputs:
    - captions: Iterable of caption strings
    - min_count: Minimum number of occurrences for a word to get its own id

    Returns a tuple of:
    - word_to_idx: Dict mapping words to ids
    - idx_to_word: List mapping ids to words
    """
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    counts = Counter(w for c in captions for w in tokenize(c))
    words = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
    idx_to_word = list(SPECIAL_TOKENS) + [w for w in words if w not in SPECIAL_TOKENS]
    return {w: i for i, w in enumerate(idx_to_word)}, idx_to_word


def encode_captions(captions, word_to_idx, max_words=MAX_WORDS):
    """Encode caption strings as the CS231n int32 array of shape (N, max_words + 2).

    Each row is <START>, the first max_words words (unknown words as <UNK>), <END>,
    then <NULL> padding.
    """
    for tok in SPECIAL_TOKENS:
        if tok not in word_to_idx:
            raise ValueError(f"vocabulary is missing the special token {tok}")
    out = np.full((len(captions), max_words + 2), word_to_idx[NULL], dtype=np.int32)
    unk = word_to_idx[UNK]
    for i, caption in enumerate(captions):
        ids = [word_to_idx.get(w, unk) for w in tokenize(caption)][:max_words]
        row = [word_to_idx[START], *ids, word_to_idx[END]]
        out[i, : len(row)] = row
    return out
