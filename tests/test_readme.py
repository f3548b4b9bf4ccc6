"""The README's examples run verbatim."""

import re
import shlex
from pathlib import Path

import pytest

from capmodel.app.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks(language):
    """Fenced blocks of the language that follow a 'runs this block verbatim' comment."""
    text = README.read_text()
    return [m.group(1) for m in re.finditer(r"runs this block verbatim[^\n]*-->\n```" + language + r"\n(.*?)```",
                                            text, re.S)]


@pytest.mark.slow
def test_library_example_runs_and_captions(tmp_path, monkeypatch, capsys):
    (code,) = _blocks("python")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    captions = eval(out.strip().splitlines()[-1])  # the printed list of three captions
    assert len(captions) == 3 and all(c.split() for c in captions)
    assert (tmp_path / "resources" / "data" / "demo" / "coco2014_captions.h5").exists()


def test_own_data_commands_run(tmp_path, monkeypatch):
    from synthetic import photo_folder_with_csv

    (sh,) = _blocks("sh")
    photo_folder_with_csv(tmp_path, folder="my_photos", csv_name="my_photos.csv")
    monkeypatch.chdir(tmp_path)
    for line in sh.strip().splitlines():
        argv = shlex.split(line)
        assert argv[0] == "capmodel" and main(argv[1:]) == 0, line
    assert (tmp_path / "models" / "mine" / "model.npz").exists()
