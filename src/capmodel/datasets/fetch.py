"""Fetch the real CS231n COCO captioning data (coco_captioning.zip, about 1 GB).

The download streams to ``<zip>.part`` with a progress bar, resumes an interrupted
download with an HTTP Range request, checks SHA-256 when given, renames the finished
file atomically, extracts it safely (absolute paths and '..' entries are refused) into a
temporary directory, validates the result against the on-disk format and only then
moves it into place. Running it again when the data is present and valid does nothing.
"""

import stat
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from capmodel.safety import ownership
from capmodel.safety.atomic import sha256_of
from capmodel.safety.staging import replace_dir, scratch_dir
from capmodel.datasets import format as fmt

DEFAULT_URL = "http://cs231n.stanford.edu/coco_captioning.zip"
CHUNK = 1 << 20


class FetchError(RuntimeError):
    """The data could not be fetched; the message says why and what to do."""


def _download(url, part, progress, timeout):
    """Stream url into part, resuming from its current size; return when complete."""
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url)
    if have and urllib.parse.urlparse(url).scheme in ("http", "https"):
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left to fetch: the .part is already complete
            return
        raise FetchError(f"HTTP error {e.code} ({e.reason}) from {url}") from e
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise FetchError(
            f"cannot reach {url} ({reason}). Download the archive by other means and "
            f"place it at {part.with_suffix('')}, or pass --url with a mirror or a file:// URL"
        ) from e
    with resp:
        status = getattr(resp, "status", None) or 200
        if status == 206:
            mode = "ab"
            total = have + int(resp.headers.get("Content-Length", 0) or 0)
        else:
            mode, have = "wb", 0
            total = int(resp.headers.get("Content-Length", 0) or 0)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=total or None, initial=have, unit="B", unit_scale=True, desc=Path(part).stem)
        got = have
        try:
            with open(part, mode) as f:
                while True:
                    try:
                        block = resp.read(CHUNK)
                    except (OSError, ValueError) as e:  # connection dropped mid-body
                        raise FetchError(
                            f"download of {url} interrupted after {got} bytes ({e}); run the same "
                            f"command again to resume from {part}"
                        ) from e
                    if not block:
                        break
                    f.write(block)
                    got += len(block)
                    if bar is not None:
                        bar.update(len(block))
        finally:
            if bar is not None:
                bar.close()
        if total and got < total:
            raise FetchError(
                f"download of {url} interrupted after {got} of {total} bytes; run the same command "
                f"again to resume from {part}"
            )


def _safe_members(zf, archive):
    """The archive's members, refusing absolute paths, '..' components and symbolic links."""
    members = zf.infolist()
    for m in members:
        p = PurePosixPath(m.filename.replace("\\", "/"))
        if p.is_absolute() or ".." in p.parts or (p.parts and ":" in p.parts[0]):
            raise FetchError(f"{archive}: refusing unsafe entry '{m.filename}' (absolute path or '..')")
        if stat.S_ISLNK(m.external_attr >> 16):
            raise FetchError(f"{archive}: refusing entry '{m.filename}': symbolic links are not allowed in the archive")
    return members


def _extract(archive, out_dir):
    """Extract archive into a temporary directory and move the dataset root to out_dir."""
    out_dir = Path(out_dir)
    with scratch_dir(out_dir.parent, f".{out_dir.name}.extract-") as tmp:
        try:
            with zipfile.ZipFile(archive) as zf:
                members = _safe_members(zf, archive)
                bad = zf.testzip()
                if bad is not None:
                    raise FetchError(f"{archive}: corrupt archive (bad CRC in '{bad}')")
                zf.extractall(tmp, members)
        except zipfile.BadZipFile as e:
            raise FetchError(f"{archive}: not a valid zip archive ({e})") from e
        except OSError as e:
            raise FetchError(f"{archive}: cannot extract the archive ({e})") from e
        roots = [p.parent for p in tmp.rglob(fmt.CAPTIONS_FILE)]
        if not roots:
            raise FetchError(f"{archive}: archive has no {fmt.CAPTIONS_FILE}; expected the files "
                             + ", ".join(fmt.required_files()))
        problems = fmt.problems(roots[0])
        if problems:
            raise FetchError(f"{archive}: the extracted data is incomplete or invalid:\n"
                             + "\n".join(f"- {p}" for p in problems))
        ownership.mark(roots[0], "dataset", manifest=True)
        replace_dir(roots[0], out_dir, "dataset", fmt.DATASET_DIR)


def fetch(out_dir, url=DEFAULT_URL, sha256=None, progress=True, timeout=30, keep_archive=False):
    """Download, verify, extract and validate the dataset into out_dir.

    Returns "present" when out_dir already held valid data, else "fetched".
    Raises FetchError with a message that names the URL or file and the problem.
    """
    if Path(out_dir).is_dir() and not fmt.problems(out_dir):
        return "present"
    fmt.check_writable_dataset_dir(out_dir)
    out_dir = Path(out_dir).resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    archive = out_dir.parent / f"{out_dir.name}.zip"  # where a zip placed by hand is picked up
    part = archive.with_name(archive.name + ".part")
    downloaded = not archive.exists()
    if downloaded:
        _download(url, part, progress, timeout)
        if sha256:
            digest = sha256_of(part)
            if digest != sha256.lower():
                part.unlink()
                raise FetchError(f"checksum mismatch for {url}: expected sha256 {sha256}, got {digest}; "
                                 "the bad download was removed")
        part.replace(archive)
    elif sha256 and sha256_of(archive) != sha256.lower():
        raise FetchError(f"checksum mismatch for {archive} (placed there by hand): expected sha256 {sha256}; "
                         "replace or remove it")
    try:
        _extract(archive, out_dir)
    except FetchError as e:
        if downloaded:  # a bad archive we downloaded must not be reused by the next run
            archive.unlink(missing_ok=True)
            raise FetchError(f"{e}; the bad download was removed") from e
        raise FetchError(f"{e}; {archive} was placed there by hand and is kept: replace or remove it") from e
    if downloaded and not keep_archive:
        archive.unlink(missing_ok=True)
    return "fetched"
