"""Replacing what capmodel writes all at once: write in a staging place, then rename.

Two shapes of one idea; each deletes only what it created, or what capmodel wrote and can
prove it did:
- ``files_together(paths)``: a set of files (a trained model's files; a captions table and
  its gallery) is written into a staging directory beside the files, then every file is
  renamed into place, or, when writing fails, none is.
- ``staged_dir(dst, kind, what)``: a whole directory (a data set) is written as a
  temporary sibling, then renamed onto dst (``replace_dir``); an earlier dst is replaced only
  when capmodel made it for the same purpose (its ownership marker) and nobody added a file
  to it since.
A staging directory carries the ``temporary`` ownership marker; one that a killed run of the
same write left behind is removed by the next run.
"""

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from capmodel.safety import ownership
from capmodel.safety.atomic import check_writable, install, make_shareable

TEMPORARY = "temporary"  # the ownership kind of a staging directory


def _remove_stale(parent, prefix):
    """Remove the staging directories named prefix* that a killed run left in parent
    (only those carrying capmodel's temporary marker)."""
    for stale in parent.glob(f"{prefix}*"):
        if ownership.is_owned(stale, TEMPORARY):
            shutil.rmtree(stale)


def _make_dirs(path):
    """Create directory path and its missing parents; the ones created, outermost first."""
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    if missing:
        missing[0].mkdir(parents=True, exist_ok=True)
    return missing[::-1]


@contextmanager
def scratch_dir(parent, prefix):
    """A new directory parent/<prefix><random> for work in progress, removed with all it
    holds when the block ends (unless the block renamed it away). It carries the temporary
    ownership marker, and those a killed run left under the same prefix go first."""
    parent = Path(parent)
    _remove_stale(parent, prefix)
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
    try:
        ownership.mark(tmp, TEMPORARY)
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def files_together(paths):
    """Write a set of files that replace their paths all together, or none of them does.

    Yields {path: staging path} for the given paths (a Path each): the block writes each
    file at its staging path, which has the file's name, in a staging directory beside it
    (.<name of the set's last file there>.staging-<random>.tmp). When the block returns,
    the staged files are renamed onto their paths in the order given (the last one, e.g.
    a model.json that vouches for the others, appears last), and a path whose file the
    block did not write is removed, so the set is what this run wrote. When the block
    raises, no path changes. Either way the staging directories go, and directories made
    for the paths go too when they are left empty.
    """
    paths = [Path(p) for p in paths]
    last = {p.parent: p.name for p in paths}  # each directory's last file names its staging directory
    made, stages = [], {}
    try:
        for parent, name in last.items():
            made += _make_dirs(parent)
            prefix = f".{name}.staging-"
            _remove_stale(parent, prefix)
            stages[parent] = Path(tempfile.mkdtemp(dir=parent, prefix=prefix, suffix=".tmp"))
            ownership.mark(stages[parent], TEMPORARY)
        staged = {p: stages[p.parent] / p.name for p in paths}
        yield staged
        for path in paths:
            if staged[path].exists():
                install(staged[path], path)
            elif path.exists():
                path.unlink()
    finally:
        for stage in stages.values():
            ownership.remove_owned(stage, TEMPORARY, lambda f: True)
        for d in reversed(made):
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()


def write_texts(files):
    """Write several text files ({path: text}), all of them or none (files_together)."""
    with files_together(files) as staged:
        for path, text in files.items():
            staged[Path(path)].write_text(text, encoding="utf-8")


def check_replaceable_dir(path, kind, what):
    """Raise OwnershipError unless path may receive a new `kind` directory (replace_dir):
    absent, empty, or one capmodel made as a `kind` directory, to which nobody added a file
    since (its marker's manifest lists everything in it); or ValueError when it could not be
    written. what: how to name it in messages (e.g. "dataset directory").

    Call it before any expensive work, so a run that would be refused fails at once.
    """
    ownership.check_owned(path, kind, what)
    check_writable(Path(path).parent / f".new-{kind}", what, directory=True)
    added = ownership.unlisted_files(path) if ownership.is_owned(path, kind) else []
    if added:
        raise ownership.OwnershipError(
            f"{what} {path} holds {len(added)} file(s) capmodel did not write there (first: "
            f"{added[0]}); move them away or choose another directory: capmodel never deletes files it did not make")


def replace_dir(src, dst, kind, what):
    """Move the complete directory src (marked as a `kind` directory) onto dst.

    An earlier dst is replaced only if check_replaceable_dir allows it; anything else
    raises OwnershipError and is left as it is. The earlier directory is renamed aside
    first and removed once src is in place.
    """
    dst = Path(dst)
    check_replaceable_dir(dst, kind, what)
    make_shareable(src, directory=True)
    old = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        if ownership.is_owned(old, kind):
            shutil.rmtree(old)
        else:  # it was checked to be empty
            os.rmdir(old)


@contextmanager
def staged_dir(dst, kind, what):
    """Write a new `kind` directory dst all at once: yields a temporary sibling directory
    (scratch_dir) for the block to fill; when the block returns, it is marked as a `kind`
    directory listing every file in it and renamed onto dst (replace_dir). When the block
    raises, dst is left as it was and the temporary directory goes."""
    dst = Path(dst)
    check_replaceable_dir(dst, kind, what)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with scratch_dir(dst.parent, f".{dst.name}.tmp-") as tmp:
        yield tmp
        ownership.mark(tmp, kind, manifest=True)
        replace_dir(tmp, dst, kind, what)
