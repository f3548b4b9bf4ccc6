"""The docs name only what the tree has: every file, test, module and link they mention exists.

Checked in README.md, docs/*.md, config/README.md and benchmarks' README-like files:
- repository paths in backticks or links (`workflow/rules/train.smk`, [x](docs/cluster.md));
  paths under what a run creates (results/, resources/, logs/, reports/*.html, .venv/) and
  paths with placeholders (<model>, {model}, *) are outputs or patterns, not files of the tree;
- test files (tests/test_*.py) wherever they are named, and test functions named with them
  (tests/test_x.py::test_y);
- dotted capmodel names in backticks (`capmodel.app.settings`, `capmodel.models.FAMILIES`): a
  module, or an attribute of one.
"""

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", ROOT / "config" / "README.md", *(ROOT / "docs").glob("*.md")])
TOP = ("src/", "tests/", "workflow/", "config/", "benchmarks/", "notebooks/", "docs/", "profiles/", ".test/",
       ".ci/")
CREATED = ("results/", "resources/", "logs/", "reports/", ".venv/", ".snakemake/")


def _names(text):
    """(kind, name) of every path, test and capmodel name the text mentions."""
    found = set()
    for code in re.findall(r"`([^`\n]+)`", text):
        for token in code.split():
            token = token.strip("'\",;:()")
            if token.startswith(TOP) or token in ("Makefile", "Snakefile", "environment.yml", "pyproject.toml"):
                found.add(("path", token))
            elif re.fullmatch(r"capmodel(\.\w+)+", token):
                found.add(("name", token))
    for link in re.findall(r"\]\(([^)#\s]+)", text):
        if not re.match(r"\w+://", link):
            found.add(("link", link))
    for test in re.findall(r"tests/test_\w+\.py(?:::\w+)?", text):
        found.add(("path", test))
    return found


def _exists(kind, name, doc):
    if kind == "name":
        parts = name.split(".")
        for i in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:i]))
            except ImportError:
                continue
            for attr in parts[i:]:
                if not hasattr(obj, attr):
                    return False
                obj = getattr(obj, attr)
            return True
        return False
    path, _, test = name.partition("::")
    if path.startswith(CREATED) or re.search(r"[<>{}*]", path):
        return True
    base = doc.parent if kind == "link" else ROOT
    target = (base / path.rstrip("/")).resolve()
    if kind == "path" and not target.exists():
        target = (doc.parent / path).resolve()
    if not target.exists():
        return False
    return not test or re.search(rf"def {test}\b", target.read_text()) is not None


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_named_file_and_module_exists(doc):
    missing = sorted(f"{kind} {name}" for kind, name in _names(doc.read_text()) if not _exists(kind, name, doc))
    assert not missing, f"{doc.relative_to(ROOT)} names what the tree does not have:\n" + "\n".join(missing)


def test_the_check_sees_a_stale_name(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text("See `tests/test_nothing_here.py`, `capmodel.rnn_layers.no_such_function`, "
                   "[a](missing.md) and `results/models/lstm/model.npz`.")
    names = _names(doc.read_text())
    assert {n for k, n in names if not _exists(k, n, doc)} == {
        "tests/test_nothing_here.py", "capmodel.rnn_layers.no_such_function", "missing.md"}


SOURCES = sorted([*(ROOT / "src").rglob("*.py"), *(ROOT / "benchmarks").glob("*.py"),
                  *(ROOT / "workflow").rglob("*.smk"),
                  *(p for p in (ROOT / "tests").glob("*.py") if p.name != "test_docs.py"), ROOT / "Makefile"])


def test_code_comments_name_only_files_that_exist():
    """Docstrings and comments cite tests, benchmarks and docs that are in the tree."""
    missing = []
    for source in SOURCES:
        for name in re.findall(r"(?:tests|benchmarks|docs)/[\w-]+\.(?:py|md)(?:::\w+)?", source.read_text()):
            if not _exists("path", name, ROOT / "README.md"):
                missing.append(f"{source.relative_to(ROOT)}: {name}")
    assert not missing, "\n".join(sorted(set(missing)))
