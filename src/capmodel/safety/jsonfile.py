"""Reading a JSON file, with one error that names the file and what is wrong with it.

Every JSON file capmodel reads goes through ``read_json``, and JSON given as text
(a command-line argument) through ``parse_json``. A missing file, one that
cannot be read, text that is not UTF-8 and text that is not JSON each raise
``JSONFileError`` (a ValueError), whose message is one line: what the file is, its path
and the problem. A caller with an error class of its own catches JSONFileError in one
place and raises its own error with that message; a caller that only asks whether a file
is capmodel's treats JSONFileError as "no". (Writing JSON: capmodel.safety.atomic.write_json.)
"""

import json
from pathlib import Path


class JSONFileError(ValueError):
    """A JSON file is missing, cannot be read, or does not hold valid JSON."""


def read_json(path, what="JSON file"):
    """The value held by the JSON file at path.

    Inputs:
    - path: The file (str or Path), read as UTF-8
    - what: How to name the file in the message (e.g. "settings file")

    Returns the decoded value (dict, list, str, number, bool or None). Raises
    JSONFileError: "<what> <path> does not exist", "<what> <path> cannot be read
    (<reason>)" or "<what> <path> is not valid JSON (<reason>)".
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise JSONFileError(f"{what} {path} does not exist") from None
    except UnicodeDecodeError as e:
        raise JSONFileError(f"{what} {path} is not valid JSON (not UTF-8 text: {e})") from None
    except OSError as e:
        raise JSONFileError(f"{what} {path} cannot be read ({e.strerror or e})") from None
    return parse_json(text, f"{what} {path}")


def parse_json(text, what="JSON text"):
    """The value of JSON text (a file's, or one given on a command line).

    Raises JSONFileError: "<what> is not valid JSON (<reason>)"."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise JSONFileError(f"{what} is not valid JSON ({e})") from None
    except RecursionError:  # nesting deeper than Python's stack: not a file capmodel wrote
        raise JSONFileError(f"{what} is not valid JSON (nested too deeply)") from None


def as_read_back(value):
    """value as read_json returns it from a file that json.dump wrote it to (tuples become
    lists, keys strings): for comparing a value with one read from a file."""
    return json.loads(json.dumps(value))
