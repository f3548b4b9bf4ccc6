"""The README's library example runs verbatim (its own-data commands: tests/test_real_photos.py)."""

import re
from pathlib import Path

import pytest

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
