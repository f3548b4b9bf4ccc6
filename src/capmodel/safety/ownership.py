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
from capmodel.safety.jsonfile import JSONFileError, read_json

MARKER = ".capmodel-owned"
KINDS = ("dataset", "checkpoints", "temporary")  # temporary: a staging directory (capmodel.safety.staging)


class OwnershipError(ValueError):
    """A directory capmodel would write into or clean up is not one it created."""


def marker_of(path):
    """The marker dict of directory path, or None when it has none (or an unreadable one)."""
    try:
        data = read_json(Path(path) / MARKER)
    except JSONFileError:
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
    """Files and directories below an owned directory that its marker's manifest does not
    list (a directory counts as listed when a listed file is inside it)."""
    listed = set((marker_of(path) or {}).get("files", []))
    parents = {p.as_posix() for f in listed for p in Path(f).parents if p != Path(".")}
    root = Path(path)
    dirs = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_dir() and not p.is_symlink())
    return [f for f in _files(path) if f not in listed] + [d for d in dirs if d not in parents]


def check_owned(path, kind, what):
    """Raise OwnershipError unless path is absent, an empty directory, or ours of this kind.

    what: how to name the path in the message (e.g. "checkpoint directory").
    """
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise OwnershipError(f"{what} {path} is a symbolic link to a missing directory; choose another path")
    try:
        if not path.exists():
            return
    except OSError as e:  # e.g. a symbolic link loop
        raise OwnershipError(f"{what} {path} cannot be used ({e.strerror or e})")
    if not path.is_dir():
        raise OwnershipError(f"{what} {path} exists and is not a directory; choose another path")
    if is_owned(path, kind):
        return
    if any(path.iterdir()):
        other = (marker_of(path) or {}).get("kind")
        why = (f"was made by capmodel as a {other} directory, not a {kind} one" if other
               else f"was not created by capmodel (no {MARKER} marker)")
        raise OwnershipError(
            f"{what} {path} is not empty and {why}; capmodel never writes into or deletes a directory it did not "
            "make for this purpose: choose a new or empty directory"
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


def remove_files(path, kind, files):
    """Delete the given files that are plain files (not symbolic links) directly inside
    path, a directory capmodel owns as a `kind` directory (its marker stays); in a
    directory that is not ours of this kind, nothing is deleted. Returns how many went."""
    path = Path(path)
    if not is_owned(path, kind):
        return 0
    gone = 0
    for f in map(Path, files):
        if f.parent == path and f.name != MARKER and f.is_file() and not f.is_symlink():
            f.unlink()
            gone += 1
    return gone


def remove_owned(path, kind, is_ours):
    """Delete the files directly inside an owned directory for which is_ours(file) is true,
    then the marker and the directory itself if capmodel created it and nothing else is
    left (a symbolic link to the directory and its target are kept).

    Returns True if the directory itself was removed. A directory that is not ours of this
    kind is left untouched.
    """
    path = Path(path)
    if not is_owned(path, kind):
        return False
    created = marker_of(path).get("created_dir", True)
    remove_files(path, kind, [f for f in path.iterdir()
                               if f.is_file() and not f.is_symlink() and f.name != MARKER and is_ours(f)])
    left = [p for p in path.iterdir() if p.name != MARKER]
    if left:
        return False
    (path / MARKER).unlink()
    if created and not path.is_symlink():
        os.rmdir(path)
        return True
    return False
