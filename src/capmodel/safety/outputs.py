"""The output files a command is about to write, checked before any work.

Every command that writes files checks them first, with the same rules: an output must
end in its suffix, must not be one of the command's inputs, must be writable, and an
existing JSON file is replaced only when it is one that capmodel wrote for the same
purpose (its "kind" key), so a model.json or a user's file is never overwritten by a record.
"""

import json
from pathlib import Path

from capmodel.safety.atomic import check_writable


def _json_kind(path):
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data.get("kind") if isinstance(data, dict) else None


def check_output(path, suffix, kind=None, inputs=()):
    """Refuse an output path before any work: it must end in suffix, must not be one of
    the command's inputs, and an existing JSON file is replaced only if it is one that
    capmodel wrote for the same purpose (kind), so a model.json or a user's file is never
    overwritten by a record."""
    path = Path(path)
    if path.suffix != suffix:
        raise ValueError(f"output file {path} must end in {suffix}")
    if any(path.resolve() == Path(i).resolve() for i in inputs):
        raise ValueError(f"output file {path} is also an input of this command; choose another name")
    check_writable(path, "output file")
    if kind is not None and path.exists() and _json_kind(path) != kind:
        raise ValueError(f"{path} exists and is not a {kind.replace('_', ' ')} capmodel wrote; capmodel does not "
                         "overwrite it: move it away or choose another output name")
