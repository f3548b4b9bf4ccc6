"""One setting's specification: name, type, default, help and allowed values.

A ``Setting`` checks a value (``check``: one message naming the setting, the bad value
and what is allowed), parses a command-line string (``parse``) and gives its JSON-schema
property (``json_schema``). The application's catalogue of every setting is
capmodel.app.settings; model families declare their own settings with this class
(``SETTINGS`` on the class, see capmodel.models), so the library needs no application
code to do so.

A setting with ``optional=True`` also takes None, which switches its feature off.
"""

import argparse
import math
from dataclasses import dataclass

_TYPE_NAMES = {int: "integer", float: "number", str: "string", bool: "boolean"}


class SettingError(ValueError):
    """A setting has a value outside its type, range or choices."""


@dataclass(frozen=True)
class Setting:
    """One setting: name, type, default, help and what values are allowed."""

    name: str
    kind: type
    default: object
    help: str
    choices: tuple = None
    minimum: float = None  # inclusive
    exclusive_minimum: float = None
    maximum: float = None  # inclusive
    exclusive_maximum: float = None
    optional: bool = False  # None is allowed and switches the feature off

    @property
    def flag(self):
        return "--" + self.name.replace("_", "-")

    def allowed(self):
        """What values are allowed, in words (for messages and docs)."""
        if self.choices:
            text = "one of " + ", ".join(map(str, self.choices))
        else:
            text = _TYPE_NAMES[self.kind]
            bounds = []
            if self.minimum is not None:
                bounds.append(f">= {self.minimum}")
            if self.exclusive_minimum is not None:
                bounds.append(f"> {self.exclusive_minimum}")
            if self.maximum is not None:
                bounds.append(f"<= {self.maximum}")
            if self.exclusive_maximum is not None:
                bounds.append(f"< {self.exclusive_maximum}")
            if self.kind is float:
                text = "finite number"
            if bounds:
                text += " " + " and ".join(bounds)
        return text + (" or null (off)" if self.optional else "")

    def check(self, value, where=None):
        """The value converted to the setting's type; SettingError if it is not allowed."""
        name = where or self.name
        bad = SettingError(f"{name} must be {self.allowed()}, got {value!r}")
        if value is None:
            if self.optional:
                return None
            raise bad
        if self.kind is bool:
            if not isinstance(value, bool):
                raise bad
            return value
        if self.kind is int:
            if (isinstance(value, bool) or not isinstance(value, (int, float))
                    or not math.isfinite(value) or int(value) != value):
                raise bad
            value = int(value)
        elif self.kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise bad
            value = float(value)
        elif not isinstance(value, str):
            raise bad
        if self.choices and value not in self.choices:
            raise bad
        if self.minimum is not None and value < self.minimum:
            raise bad
        if self.exclusive_minimum is not None and value <= self.exclusive_minimum:
            raise bad
        if self.maximum is not None and value > self.maximum:
            raise bad
        if self.exclusive_maximum is not None and value >= self.exclusive_maximum:
            raise bad
        return value

    def parse(self, text):
        """Convert a command-line string (argparse `type=`); the error names the flag."""
        if self.optional and text.lower() in ("none", "null", "off"):
            return None
        try:
            value = self.kind(text) if self.kind is not bool else text
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {self.allowed()}, got {text!r}")
        try:
            return self.check(value)
        except SettingError:
            raise argparse.ArgumentTypeError(f"must be {self.allowed()}, got {text!r}")

    def json_schema(self):
        """The JSON-schema property of this setting (without its default)."""
        kind = _TYPE_NAMES[self.kind]
        prop = {"type": [kind, "null"] if self.optional else kind}
        if self.choices:
            prop["enum"] = list(self.choices) + ([None] if self.optional else [])
        for key in ("minimum", "exclusive_minimum", "maximum", "exclusive_maximum"):
            if getattr(self, key) is not None:
                prop[{"exclusive_minimum": "exclusiveMinimum", "exclusive_maximum": "exclusiveMaximum"}.get(key, key)] = (
                    getattr(self, key))
        prop["description"] = self.help
        return prop
