"""The output files a command is about to write, checked before any work.

Every command that writes files checks all of them first, with the same rules: an output
must end in its suffix, must not be one of the command's inputs (nor another of its
outputs), must be writable, and an existing file is replaced only when it is one that
capmodel wrote for the same purpose (its kind), so a model, a picture or a user's file is
never overwritten by a table or a page. How a file says what it is depends on its type:
- JSON: the object's "kind" key (a metrics file: "metrics");
- HTML: the content of its <meta name="generator"> tag (the caption gallery: "capmodel caption");
- any other text (CSV, Markdown): its first line, the header capmodel writes.
A kind is a string (equal) or, for a header whose columns vary, a compiled regular
expression (the whole first line matches).
"""

import re
from pathlib import Path

from capmodel.safety.atomic import check_writable
from capmodel.safety.jsonfile import JSONFileError, read_json

HEAD_BYTES = 1 << 16  # how much of an existing file is read to tell what it is
_GENERATOR = re.compile(r"""<meta\s+name=["']generator["']\s+content=["']([^"']*)["']""", re.I)


def kind_of(path):
    """What an existing file says it is (see the module docstring), or None when it says
    nothing capmodel writes (unreadable, not text, no kind)."""
    path = Path(path)
    if path.suffix == ".json":
        try:
            data = read_json(path)
        except JSONFileError:
            return None
        return data.get("kind") if isinstance(data, dict) else None
    try:
        with open(path, "rb") as f:
            head = f.read(HEAD_BYTES).decode("utf-8-sig")
    except (OSError, UnicodeDecodeError):
        return None
    if path.suffix == ".html":
        found = _GENERATOR.search(head)
        return found.group(1) if found else None
    return head.splitlines()[0] if head else None


def _is(found, kind):
    if isinstance(kind, re.Pattern):
        return found is not None and kind.fullmatch(found) is not None
    return found == kind


def _named(suffix, kind):
    if suffix == ".json":
        return f"a {kind.replace('_', ' ')} capmodel wrote"
    if suffix == ".html":
        return f"a page {kind} wrote"
    shown = "the header capmodel writes" if isinstance(kind, re.Pattern) else repr(kind)
    return f"a file capmodel wrote there (its first line is not {shown})"


def check_output(path, suffix, kind=None, inputs=()):
    """Refuse an output path before any work: it must end in suffix, must not be one of
    the command's inputs, must be writable, and an existing file is replaced only if it is
    one that capmodel wrote for the same purpose (kind_of(path) is kind; kind None: any
    file of the suffix), so a model.json or a user's file is never overwritten by a record.

    Raises ValueError naming the path."""
    path = Path(path)
    if path.suffix != suffix:
        raise ValueError(f"output file {path} must end in {suffix}")
    if any(path.resolve() == Path(i).resolve() for i in inputs):
        raise ValueError(f"output file {path} is also an input of this command; choose another name")
    check_writable(path, "output file")
    if kind is not None and path.exists() and not _is(kind_of(path), kind):
        raise ValueError(f"{path} exists and is not {_named(suffix, kind)}; capmodel does not overwrite it: move "
                         "it away or choose another output name")


def check_outputs(outputs, inputs=()):
    """check_output for each (path, suffix, kind) of outputs (None paths are skipped), and
    no two of them the same file. Returns the paths checked."""
    outputs = [(Path(p), suffix, kind) for p, suffix, kind in outputs if p is not None]
    seen = []
    for path, suffix, kind in outputs:
        if any(path.resolve() == s.resolve() for s in seen):
            raise ValueError(f"output file {path} is given twice; each output needs its own name")
        check_output(path, suffix, kind, inputs)
        seen.append(path)
    return seen


def check_not_inside(directory, paths, what):
    """Refuse inputs that lie inside (or are) directory, which a command is about to replace
    as a whole: paths, resolved through symbolic links, must be outside it.

    what: how to name the directory in the message (e.g. "output data set")."""
    top = Path(directory).resolve()
    for p in paths:
        real = Path(p).resolve()
        if real == top or top in real.parents:
            linked = "" if real == Path(p).absolute() else f" (a symbolic link to {real})"
            raise ValueError(f"{p}{linked} is inside the {what} {directory}, which this command replaces (deleting "
                             "what is in it): choose an output directory outside its inputs")

