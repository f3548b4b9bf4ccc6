"""Tests of capmodel.safety.jsonfile: one reader, one error naming the file and the problem."""

import pytest

from capmodel.safety.jsonfile import JSONFileError, as_read_back, read_json


def test_reads_any_json_value(tmp_path):
    path = tmp_path / "a.json"
    for text, value in (('{"a": [1, 2.5, null]}', {"a": [1, 2.5, None]}), ("[true]", [True]), ('"x"', "x"),
                        ('{"word": "caf\u00e9"}', {"word": "caf\u00e9"})):
        path.write_text(text, encoding="utf-8")
        assert read_json(path) == value


@pytest.mark.parametrize("case, message", [
    ("missing", "settings file {p} does not exist"),
    ("directory", "settings file {p} cannot be read (Is a directory)"),
    ("truncated", "settings file {p} is not valid JSON (Expecting value: line 1 column 7 (char 6))"),
    ("latin-1", "settings file {p} is not valid JSON (not UTF-8 text: "),
    ("empty", "settings file {p} is not valid JSON (Expecting value: line 1 column 1 (char 0))"),
    ("nested", "settings file {p} is not valid JSON (nested too deeply)"),
])
def test_every_problem_is_one_error_naming_the_file(tmp_path, case, message):
    path = tmp_path / "s.json"
    if case == "directory":
        path.mkdir()
    elif case == "truncated":
        path.write_text('{"a": ')
    elif case == "latin-1":
        path.write_bytes('{"a": "caf\u00e9"}'.encode("latin-1"))
    elif case == "empty":
        path.write_text("")
    elif case == "nested":
        path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(JSONFileError) as e:
        read_json(path, "settings file")
    assert str(e.value).startswith(message.format(p=path)) and "\n" not in str(e.value)
    assert isinstance(e.value, ValueError)  # the CLI's one line for bad input


def test_an_unreadable_file_is_named(tmp_path, monkeypatch):
    path = tmp_path / "s.json"
    path.write_text("{}")

    def denied(self, *args, **kwargs):  # as chmod 0 does for anyone but root
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(type(path), "read_text", denied)
    with pytest.raises(JSONFileError, match=f"JSON file {path} cannot be read \\(Permission denied\\)"):
        read_json(path)


def test_as_read_back_gives_what_a_file_gives(tmp_path):
    value = {"sizes": (1, 2), 3: "x"}
    path = tmp_path / "v.json"
    path.write_text('{"sizes": [1, 2], "3": "x"}')
    assert as_read_back(value) == read_json(path) != value
