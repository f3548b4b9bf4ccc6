"""Read pictures: image files and http(s)/file:// URLs, as the RGB arrays every capmodel
reader sees (data sets from folders, `capmodel caption`, its gallery, the reports).

open_rgb is the one way a picture file becomes RGB; IMAGE_SUFFIXES the one list of the
files it is given; thumbnail_uri the one way a picture is embedded in an HTML page.
image_from_url keeps CS231n's name and returns an array of shape (H, W, 3).
"""

import base64
import io
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# The picture files capmodel reads (lower case; a file's suffix counts in any case).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".tiff", ".webp")
# Transparent pixels are composited onto this colour (white, as a browser shows them on a page).
BACKGROUND = (255, 255, 255)
THUMBNAIL_SIDE = 256  # embedded pictures are at most this many pixels a side
# The errors by which PIL says a file is not a picture it can decode.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, UnidentifiedImageError, Image.DecompressionBombError)
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")


def open_rgb(source):
    """Open a picture as the RGB image every capmodel reader sees.

    - The EXIF orientation is applied: a photo stored sideways comes out upright.
    - 16-bit images (modes I;16 and I, as 16-bit PNG and TIFF files decode) are scaled to
      8 bits, 65535 -> 255 (PIL's own conversion clips them, so they come out white).
    - Transparency (RGBA, LA, PA, or a palette/grey/RGB image with a transparent colour)
      is composited onto BACKGROUND (white).
    - Everything else is PIL's convert("RGB"), so an ordinary RGB PNG or JPEG gives
      exactly the pixels it did before capmodel had this function.
    Animated files give their first frame.

    Inputs:
    - source: A file path or a binary file object

    Returns a fully decoded PIL.Image.Image in mode RGB.
    Raises ValueError naming the source when the file cannot be decoded.
    """
    try:
        return _decode(source)
    except _DECODE_ERRORS as e:
        raise ValueError(f"cannot read image {source}: {e}") from e


def _decode(source):
    """open_rgb without the error message: PIL's exceptions pass through."""
    with Image.open(source) as img:
        img.load()  # decode now, so that a truncated or corrupt file fails here
        img = ImageOps.exif_transpose(img)
    if img.mode in _SIXTEEN_BIT:
        wide = np.clip(np.asarray(img, dtype=np.int64), 0, 65535)
        img = Image.fromarray(((wide + 128) // 257).astype(np.uint8))  # rounded: 65535 -> 255
    if img.mode in ("P", "L", "RGB") and "transparency" in img.info:
        img = img.convert("RGBA")  # a palette entry or colour key marks the transparent pixels
    if img.mode in _ALPHA:
        img = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", img.size, (*BACKGROUND, 255)), img).convert("RGB")
    return img.convert("RGB")


def thumbnail_uri(image, side=THUMBNAIL_SIDE):
    """A data: URI embedding an image reduced to at most side pixels a side.

    A picture within side stays as it is, as PNG (exact: the shapes pictures); a reduced
    one is the smaller of PNG (drawings, screenshots) and JPEG at quality 90 (photos).

    Inputs:
    - image: A PIL image or a uint8 array of shape (H, W, 3)
    - side: The longest side of the embedded picture, in pixels (smaller ones stay as they are)

    Returns a str "data:image/png;base64,..." or "data:image/jpeg;base64,...".
    """
    image = Image.fromarray(image) if isinstance(image, np.ndarray) else image.copy()
    image = image.convert("RGB")
    reduced = max(image.size) > side
    image.thumbnail((side, side), Image.LANCZOS)
    encoded = {}
    for kind, options in (("png", {}), ("jpeg", {"quality": 90}))[: 2 if reduced else 1]:
        buf = io.BytesIO()
        image.save(buf, format=kind.upper(), **options)
        encoded[kind] = buf.getvalue()
    kind = min(encoded, key=lambda k: len(encoded[k]))
    return f"data:image/{kind};base64," + base64.b64encode(encoded[kind]).decode("ascii")


def image_from_url(url, timeout=10):
    """Read an image into a uint8 array of shape (H, W, 3), as open_rgb sees it.

    Inputs:
    - url: http(s):// or file:// URL, or a plain file path
    - timeout: Seconds to wait for a remote server

    Raises ValueError naming the URL and the reason when the image cannot be read.
    """
    scheme = urllib.parse.urlparse(str(url)).scheme
    try:
        if scheme in ("http", "https"):
            with urllib.request.urlopen(url, timeout=timeout) as f:
                raw = f.read()
        elif scheme == "file":
            raw = Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path)).read_bytes()
        elif scheme == "" or len(scheme) == 1:  # a plain path (or a Windows drive letter)
            raw = Path(url).read_bytes()
        else:
            raise ValueError(f"unsupported URL scheme '{scheme}'")
        return np.asarray(_decode(io.BytesIO(raw)))
    except (*_DECODE_ERRORS, urllib.error.URLError) as e:
        raise ValueError(f"could not read image from {url}: {e}") from e
