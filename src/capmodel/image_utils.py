"""Read images for display: from http(s) URLs, file:// URLs or plain paths."""

import io
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np


def image_from_url(url, timeout=10):
    """Read an image into a uint8 array of shape (H, W, 3).

    Inputs:
    - url: http(s):// or file:// URL, or a plain file path
    - timeout: Seconds to wait for a remote server

    Raises ValueError naming the URL and the reason when the image cannot be read.
    """
    from PIL import Image, UnidentifiedImageError

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
        with Image.open(io.BytesIO(raw)) as img:
            return np.asarray(img.convert("RGB"))
    except (OSError, urllib.error.URLError, UnidentifiedImageError, ValueError) as e:
        raise ValueError(f"could not read image from {url}: {e}") from e
