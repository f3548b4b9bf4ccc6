"""Read pictures: image files and http(s)/file:// URLs, as the RGB arrays every capmodel
reader sees (data sets from folders, `capmodel caption`, its gallery, the reports).

open_rgb is the one way a picture file becomes RGB; IMAGE_SUFFIXES the one list of the
files it is given; thumbnail_uri the one way a picture is embedded in an HTML page.
image_from_url keeps CS231n's name and returns an array of shape (H, W, 3).
"""

import base64
import io
import os
import stat
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# The picture files capmodel reads (lower case; a file's suffix counts in any case).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".tiff", ".webp")
# Transparent pixels are composited onto this colour (white, as a browser shows them on a page).
BACKGROUND = (255, 255, 255)
THUMBNAIL_SIDE = 256  # embedded pictures are at most this many pixels a side
# image_from_url reads at most this many bytes of one picture (a report reading a urls entry
# that names a device or a huge file must not read it whole); a larger one is refused.
MAX_PICTURE_BYTES = 128 << 20
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
      exactly its stored pixels.
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


def _read_capped(f, what):
    raw = f.read(MAX_PICTURE_BYTES + 1)
    if len(raw) > MAX_PICTURE_BYTES:
        raise ValueError(f"the {what} is larger than {MAX_PICTURE_BYTES} bytes")
    return raw


def _read_file(path):
    """The bytes of a regular file of at most MAX_PICTURE_BYTES (its size is checked before reading)."""
    st = os.stat(path)  # before open(), which waits forever on a pipe without a writer
    if not stat.S_ISREG(st.st_mode):
        raise ValueError("not a regular file")
    if st.st_size > MAX_PICTURE_BYTES:
        raise ValueError(f"the file is larger than {MAX_PICTURE_BYTES} bytes")
    with open(path, "rb") as f:
        return _read_capped(f, "file")


def image_from_url(url, timeout=10):
    """Read an image into a uint8 array of shape (H, W, 3), as open_rgb sees it.

    Inputs:
    - url: http(s):// or file:// URL, or a plain file path
    - timeout: Seconds to wait for a remote server

    At most MAX_PICTURE_BYTES are read: a larger picture, and a path that is no regular file
    (a device, a pipe), are refused. Raises ValueError naming the URL and the reason when
    the image cannot be read.
    """
    scheme = urllib.parse.urlparse(str(url)).scheme
    try:
        if scheme in ("http", "https"):
            with urllib.request.urlopen(url, timeout=timeout) as f:
                raw = _read_capped(f, "picture")
        elif scheme == "file":
            raw = _read_file(urllib.request.url2pathname(urllib.parse.urlparse(url).path))
        elif scheme == "" or len(scheme) == 1:  # a plain path (or a Windows drive letter)
            raw = _read_file(url)
        else:
            raise ValueError(f"unsupported URL scheme '{scheme}'")
        return np.asarray(_decode(io.BytesIO(raw)))
    except (*_DECODE_ERRORS, urllib.error.URLError) as e:
        raise ValueError(f"could not read image from {url}: {e}") from e
