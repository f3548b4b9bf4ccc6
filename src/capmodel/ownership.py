"""Which directories capmodel made, and may therefore replace or clean up.

The project deletes only what it created and can prove it did. When capmodel creates a
directory it owns (a dataset, a checkpoint directory), it writes a marker file
``.capmodel-owned`` into it: JSON with the kind of directory and the capmodel version.
Code that replaces or cleans up a directory first calls ``check_owned``; a directory
without the marker (or with the marker of another kind) is never removed, and writing
into a non-empty one is refused with a message that names it.

Clean-up removes only the files capmodel itself writes there (``remove_owned`` takes
their names), then the directory if that left it empty; anything a user put inside stays.
"""

import json
import os
from pathlib import Path

from capmodel import __version__

MARKER = ".capmodel-owned"
KINDS = ("dataset", "checkpoints")


class OwnershipError(ValueError):
    """A directory capmodel would write into or clean up is not one it created."""


def marker_of(path):
    """The marker dict of directory path, or None when it has none (or an unreadable one)."""
    try:
        data = json.loads((Path(path) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_owned(path, kind):
    """True if path is a directory that capmodel created as a `kind` directory."""
    m = marker_of(path)
    return m is not None and m.get("kind") == kind


def mark(path, kind, created=True, manifest=False):
    """Write the marker into directory path (which must exist).

    With manifest=True the marker lists every file now below path, so that a later
    replacement can tell whether anyone added a file since (unlisted_files).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown directory kind {kind!r}; one of {KINDS}")
    record = {"kind": kind, "created_by": f"capmodel {__version__}", "created_dir": bool(created)}
    if manifest:
        record["files"] = _files(path)
    (Path(path) / MARKER).write_text(json.dumps(record) + "\n")


def _files(path):
    root = Path(path)
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if (p.is_file() or p.is_symlink()) and p.name != MARKER)


def unlisted_files(path):
    """Files below an owned directory that its marker's manifest does not list."""
    listed = set((marker_of(path) or {}).get("files", []))
    return [f for f in _files(path) if f not in listed]


def check_owned(path, kind, what):
    """Raise OwnershipError unless path is absent, an empty directory, or ours of this kind.

    what: how to name the path in the message (e.g. "checkpoint directory").
    """
    path = Path(path)
    if not path.exists():
        return
    if not path.is_dir():
        raise OwnershipError(f"{what} {path} exists and is not a directory; choose another path")
    if is_owned(path, kind):
        return
    if any(path.iterdir()):
        raise OwnershipError(
            f"{what} {path} is not empty and was not created by capmodel (no {MARKER} marker); "
            "capmodel never writes into or deletes a directory it did not make: choose a new or empty directory"
        )


def claim(path, kind, what):
    """Create directory path (or take an empty one) as a `kind` directory; see check_owned."""
    path = Path(path)
    check_owned(path, kind, what)
    created = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    if not is_owned(path, kind):
        mark(path, kind, created=created)
    return path


def remove_owned(path, kind, names):
    """Delete the given files (names or glob patterns) inside an owned directory, then the
    marker and the directory itself if capmodel created it and nothing else is left.

    Returns True if the directory itself was removed. A directory that is not ours of this
    kind is left untouched.
    """
    path = Path(path)
    if not is_owned(path, kind):
        return False
    created = marker_of(path).get("created_dir", True)
    for pattern in names:
        for f in path.glob(pattern):
            if f.is_file() and not f.is_symlink():
                f.unlink()
    left = [p for p in path.iterdir() if p.name != MARKER]
    if left:
        return False
    (path / MARKER).unlink()
    if created:
        os.rmdir(path)
        return True
    return False
