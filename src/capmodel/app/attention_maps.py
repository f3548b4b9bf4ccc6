"""Attention maps drawn over pictures: the Show, Attend and Tell figure, one small picture per
word of a caption with the weights that word put on the G x G regions shown over it.

A map is drawn on the part of the picture the encoder's grid covers: the centred square
(square_view; every capmodel encoder centre-crops a square first: randconv sees the whole
square, the pretrained CNNs its middle (their preprocessing's crop, e.g. 224 of 256
pixels), so their maps reach slightly past the part they saw). The G x G weights are
upsampled bilinearly between the cells' centres to the thumbnail's pixels and divided by
their largest weight, giving a level m from 0 to 1 per pixel. The picture is darkened where m is low and lit where it is high: a pixel keeps
FLOOR + (1 - FLOOR) * m of its brightness, then moves GLOW * m of the way to white, so an
attended region stands out on a dark picture as well as on a light one, and an unattended
one shows dimly. The largest weight is printed under the word, so a flat map (every weight
near 1 / L, every pixel lit alike) is not mistaken for a sharp one.

Dimension letters: T words, L = G * G regions, G grid side, H and W pixels.
"""

import base64
import html
import io
import math

import numpy as np
from PIL import Image

MAP_SIDE = 128  # pixels a side of each word's picture
FLOOR = 0.22  # brightness kept where a word puts no weight
GLOW = 0.25  # how far towards white the most attended pixels move
JPEG_GAIN = 3  # a map is embedded as JPEG only when that makes it this many times smaller
# Styles of maps_html's rows, included by every page that shows them (the caption gallery,
# the reports through capmodel.app.report_html.CSS).
CSS = f"""
.attmaps {{display: flex; flex-wrap: wrap; gap: 6px; margin: 6px 0 2px 0;}}
.attmaps figure {{margin: 0; width: {MAP_SIDE + 2}px; text-align: center;}}
.attmaps img {{width: {MAP_SIDE}px; height: {MAP_SIDE}px; display: block; image-rendering: auto; border: 1px solid #bbb;}}
.attmaps figcaption {{font: 600 14px/1.3 sans-serif; color: #111; overflow-wrap: anywhere;}}
.attmaps figcaption small {{display: block; font-weight: 400; font-size: 11px; color: #666;}}
"""


def grid_side(num_regions):
    """The side G of a grid of L = G * G regions; ValueError unless L is a square."""
    side = math.isqrt(int(num_regions))
    if num_regions < 1 or side * side != num_regions:
        raise ValueError(f"{num_regions} regions are no square grid G x G")
    return side


def square_view(image):
    """The centred square of a picture (a PIL image or uint8 array (H, W, 3)), the part
    that capmodel's encoders crop before computing its grid of regions, as a PIL image."""
    image = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    w, h = image.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return image.convert("RGB").crop((left, top, left + s, top + s))


def thumbnail(image, side=MAP_SIDE):
    """A picture's square view at side x side pixels, uint8 (side, side, 3): enlarged by
    whole pixels (nearest) so that small drawings stay sharp, reduced with Lanczos."""
    view = square_view(image)
    s = view.size[0]
    resample = Image.NEAREST if s < side and side % s == 0 else Image.LANCZOS
    return np.asarray(view.resize((side, side), resample), dtype=np.uint8)


def upsample(weights, height, width):
    """Bilinear upsampling of a grid of weights to pixels, each cell's value at its centre.

    Inputs:
    - weights: Weights of the regions, of shape (G, G), row-major as the regions are
    - height, width: Size of the picture the grid covers

    Returns an array of shape (height, width) (float64); pixels within half a cell of the
    border take the value of the nearest cell centres (no extrapolation), so every value
    lies between the smallest and the largest weight.
    """
    weights = np.asarray(weights, dtype=np.float64)
    G = weights.shape[0]

    def axis(n):  # for each of n pixels: the cell below, the one above, and the fraction between
        pos = np.clip((np.arange(n) + 0.5) * G / n - 0.5, 0, G - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, G - 1)
        return lo, hi, pos - lo

    r0, r1, fr = axis(height)
    c0, c1, fc = axis(width)
    rows = weights[r0] * (1 - fr)[:, None] + weights[r1] * fr[:, None]  # (height, G)
    return rows[:, c0] * (1 - fc) + rows[:, c1] * fc


def overlay(picture, weights):
    """A picture darkened where a word's attention weights are low and lit where they are high.

    Inputs:
    - picture: uint8 array of shape (H, W, 3), the part of the picture the grid covers
    - weights: The word's weights on the regions, of shape (L,), L = G * G, row-major

    Returns uint8 (H, W, 3): with m = w / max(weights), w the weight upsampled to a pixel,
    the pixel's value v becomes v * (FLOOR + (1 - FLOOR) * m) moved GLOW * m of the way to 255.
    """
    weights = np.asarray(weights, dtype=np.float64)
    G = grid_side(weights.size)
    H, W = picture.shape[:2]
    peak = weights.max()
    level = upsample(weights.reshape(G, G), H, W) / peak if peak > 0 else np.zeros((H, W))
    shaded = picture * (FLOOR + (1 - FLOOR) * level)[:, :, None]  # (H, W, 3)
    glow = (GLOW * level)[:, :, None]
    return np.clip(np.rint(shaded * (1 - glow) + 255 * glow), 0, 255).astype(np.uint8)


def word_maps(image, alphas, side=MAP_SIDE):
    """One picture per word: the picture's square view at side pixels with the word's map.

    Inputs:
    - image: A PIL image or uint8 array (H, W, 3), the whole picture
    - alphas: Attention weights of shape (T, L): row t is word t's weights on the L regions

    Returns a list of T uint8 arrays of shape (side, side, 3).
    """
    alphas = np.asarray(alphas)
    if alphas.ndim != 2:
        raise ValueError(f"attention weights must have shape (T, L), got {alphas.shape}")
    base = thumbnail(image, side)
    return [overlay(base, a) for a in alphas]


def image_uri(array):
    """A data: URI of a uint8 (H, W, 3) array: PNG (exact), or JPEG at quality 90 when the PNG
    is more than JPEG_GAIN times larger (a photo's maps: some 30 KB as PNG, 4 KB as JPEG)."""
    encoded = {}
    for kind, options in (("png", {"optimize": True}), ("jpeg", {"quality": 90})):
        buf = io.BytesIO()
        Image.fromarray(array).save(buf, format=kind.upper(), **options)
        encoded[kind] = buf.getvalue()
    kind = "jpeg" if len(encoded["png"]) > JPEG_GAIN * len(encoded["jpeg"]) else "png"
    return f"data:image/{kind};base64," + base64.b64encode(encoded[kind]).decode("ascii")


def maps_html(image, words, alphas, side=MAP_SIDE):
    """A row of figures, one per word: its attention map over the picture, the word under it
    and the word's largest weight (class "attmaps", styled by CSS).

    Inputs:
    - image: A PIL image or uint8 array (H, W, 3)
    - words: The T words of the caption
    - alphas: Their attention weights, of shape (T, L)
    """
    alphas = np.asarray(alphas)
    if len(words) != len(alphas):
        raise ValueError(f"{len(words)} words but {len(alphas)} rows of attention weights")
    figures = []
    for word, a, picture in zip(words, alphas, word_maps(image, alphas, side)):
        G = grid_side(a.size)
        r, c = divmod(int(np.argmax(a)), G)
        note = f"max {a.max():.2f}"
        tip = f"{word}: largest weight {a.max():.3f} on region row {r + 1}, column {c + 1} of {G} x {G}"
        figures.append(f'<figure><img src="{image_uri(picture)}" alt="{html.escape(tip)}" title="{html.escape(tip)}">'
                       f"<figcaption>{html.escape(word)}<small>{note}</small></figcaption></figure>")
    return '<div class="attmaps">' + "".join(figures) + "</div>"
