"""Atomic file writes: write to a temporary file in the same directory, then rename.

A reader (or a crash) therefore sees either the old file or the complete new one,
never a partial file. Temporary files and directories are created private (mode 0600 /
0700); before the rename they get the mode a plain ``open()`` or ``mkdir`` would have
given them under the current umask, so collaborators on a shared filesystem can read
results.
"""

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path, suffix=""):
    """Yield a temporary path next to `path`; rename it onto `path` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp" + suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        install(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def install(tmp, path):
    """Rename the complete file tmp onto path (in the same directory or filesystem), after
    flushing it to disk and giving it the mode a plain open() would have."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    make_shareable(tmp)
    os.replace(tmp, path)


def remove_file(path, is_ours):
    """Delete the file at path if is_ours(path) shows that capmodel wrote it (e.g. a
    features file's own attributes); of a symbolic link to such a file only the link goes,
    never its target. A missing file, a directory or a file is_ours rejects stays. Returns
    True if the file (or link) was deleted."""
    path = Path(path)
    if path.is_file() and is_ours(path):
        path.unlink()
        return True
    return False


def sha256_of(path):
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def make_shareable(path, directory=False):
    """Give path the mode open() (0666) or mkdir() (0777) would have under the umask."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def write_text(path, text):
    """Atomically write a text file."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path, obj):
    """Atomically write an object as indented JSON."""
    write_text(path, json.dumps(obj, indent=2) + "\n")


def check_writable(path, what, directory=False):
    """Raise ValueError unless path can be written (as a directory or a file) later.

    Nothing is created: the nearest existing ancestor must be a writable directory, and
    path itself, if it exists, must be a directory (directory=True) or a file.
    """
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise ValueError(f"{what} {path} is a symbolic link to a missing target (or a link loop)")
    if path.exists():
        if directory and not path.is_dir():
            raise ValueError(f"{what} {path} exists and is not a directory")
        if not directory and path.is_dir():
            raise ValueError(f"{what} {path} is a directory; give a file name")
    parent = path if directory and path.exists() else path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{what} {path} cannot be created: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {path} cannot be written: no write permission in {parent}")
