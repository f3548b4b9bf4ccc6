"""The package's import graph: dependencies point one way, and nothing imports in a circle.

capmodel.app (the application: CLI, pipeline, settings, reports, gradient-check suite)
may import the library; the library (everything else under src/capmodel) never imports
the application; capmodel.kernels and capmodel.safety (low-level helpers) import neither.
Every import statement counts, at module level or inside a function.

Also the package's other rules of where things live: files are moved and deleted only in
capmodel.safety, JSON files are read only by capmodel.safety.jsonfile.read_json, one
training path (no `objective is None`), models fed from a data dict only through
capmodel.models.image_inputs, no two modules named one letter apart.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
APP = "capmodel.app"
LOW_LEVEL = ("capmodel.kernels", "capmodel.safety")


def _module_name(path, src):
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _within(name, prefix):
    return name == prefix or name.startswith(prefix + ".")


def import_graph(src, package="capmodel"):
    """{module: {(imported module, line)}} for every module of package under src, with
    imports inside functions included. `from a import b` counts as importing a.b when
    a.b is a module of the package, else as importing a; importing a.b also runs a."""
    modules = {_module_name(p, src): p for p in (src / package).rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    anchor = name.split(".")[: len(name.split(".")) - node.level + is_package]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                parts = target.split(".")
                for i in range(1, len(parts) + 1):  # a.b.c runs a, a.b and a.b.c
                    prefix = ".".join(parts[:i])
                    if prefix in modules and prefix != name:
                        edges.add((prefix, node.lineno))
        graph[name] = edges
    return graph


def find_cycle(graph):
    """One import cycle as a list of modules [a, b, ..., a], or None."""
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for target, _ in sorted(graph.get(m, ())):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        stack.pop()
        state[m] = "done"
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def _is_package_parent(module, target):
    """A package __init__ importing nothing but being run by its submodules is no cycle:
    only count edges to a parent package when that package's __init__ imports something."""
    return module.startswith(target + ".")


def test_no_import_cycle():
    graph = import_graph(SRC)
    # Importing a.b runs a/__init__.py; that is a cycle only if a/__init__.py imports back.
    graph = {m: {(t, line) for t, line in edges if not _is_package_parent(m, t) or graph[t]}
             for m, edges in graph.items()}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_library_never_imports_the_application():
    bad = [f"{m} imports {t} (line {line})" for m, edges in import_graph(SRC).items() if not _within(m, APP)
           for t, line in edges if _within(t, APP)]
    assert not bad, "\n".join(bad)


def test_low_level_helpers_import_only_each_other():
    bad = [f"{m} imports {t} (line {line})" for m, edges in import_graph(SRC).items()
           if any(_within(m, p) for p in LOW_LEVEL)
           for t, line in edges if t != "capmodel" and not any(_within(t, p) for p in LOW_LEVEL)]
    assert not bad, "\n".join(bad)


def test_the_checks_find_a_cycle_and_a_wrong_direction(tmp_path):
    """The graph walker sees imports inside functions, relative imports and from-imports."""
    pkg = tmp_path / "capmodel"
    (pkg / "app").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "app" / "__init__.py").write_text("")
    (pkg / "app" / "cli.py").write_text("from capmodel import models\n")
    (pkg / "models.py").write_text("def f():\n    from capmodel.app import cli\n")
    (pkg / "layers.py").write_text("from . import models\n")
    graph = import_graph(tmp_path)
    assert ("capmodel.app.cli", 2) in graph["capmodel.models"]
    assert ("capmodel.models", 1) in graph["capmodel.layers"]
    assert find_cycle(graph) == ["capmodel.app.cli", "capmodel.models", "capmodel.app.cli"]
    (pkg / "models.py").write_text("import numpy\n")
    assert find_cycle(import_graph(tmp_path)) is None


@pytest.mark.parametrize("module", ["capmodel.classifiers.transformer", "capmodel.classifiers.rnn",
                                    "capmodel.rnn_layers", "capmodel.transformer_layers"])
def test_models_and_layers_import_light(module):
    """A learner's import of a model or a layer module pulls in NumPy, not h5py, the solver
    or the application."""
    code = (f"import sys, {module}\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('h5py', 'PIL', 'tqdm', 'yaml')\n"
            "               or m.startswith('capmodel.app') or m == 'capmodel.captioning_solver')\n"
            "print(' '.join(heavy))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""


TORCH_MODULES = ("capmodel.encoders.torchnets", "capmodel.encoders.efficientnet")  # the optional torch extras


def test_only_the_torch_encoders_import_torch():
    """The NumPy library never imports torch; capmodel.encoders.torchnets and .efficientnet
    (imported by the registry only when a pretrained CNN is asked for) are the modules that do."""
    bad = []
    for path in (SRC / "capmodel").rglob("*.py"):
        name = _module_name(path, SRC)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n.split(".")[0] in ("torch", "torchvision") for n in names) and name not in TORCH_MODULES:
                bad.append(f"{name} imports {', '.join(names)} (line {node.lineno})")
    assert not bad, "\n".join(bad)


def test_importing_the_encoders_does_not_import_torch():
    """Until a pretrained CNN is made, the encoders, the data sets and the CLI run without torch."""
    code = ("import sys, capmodel.encoders, capmodel.encoders.registry, capmodel.encoders.imagenet\n"
            "import capmodel.datasets.folder, capmodel.app.captioner, capmodel.app.cli\n"
            "capmodel.app.cli.build_parser()\n"
            "capmodel.encoders.registry.get_encoder('randconv')\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_no_unused_imports_or_variables():
    """Pyflakes' checks (through ruff): unused imports, redefined names, unused variables,
    in the package, the tests, the benchmarks and the report notebooks."""
    root = SRC.parent
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--select", "F401,F811,F841",
                           "--output-format", "concise", "src", "tests", "benchmarks", "workflow/notebooks"],
                          cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def _names(node):
    """The identifier a Name or Attribute node ends with ('objective' for self.objective)."""
    return node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None


def test_the_solver_has_one_training_path():
    """Cross-entropy is an objective like the others (capmodel.objectives): no code asks
    whether there is an objective to pick another path."""
    bad = []
    for path in (SRC / "capmodel").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Compare) and any(isinstance(op, (ast.Is, ast.IsNot)) for op in node.ops):
                operands = [node.left, *node.comparators]
                if any(_names(o) == "objective" for o in operands) and any(
                        isinstance(o, ast.Constant) and o.value is None for o in operands):
                    bad.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert not bad, "objective is None branches: " + ", ".join(bad)


def _split_features_key(node):
    """True for data["train_features"] or data[f"{split}_features"] keys."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value.endswith("_features")
    if isinstance(node, ast.JoinedStr) and node.values:
        last = node.values[-1]
        return isinstance(last, ast.Constant) and str(last.value).endswith("_features")
    return False


# CS231n's sample_coco_minibatch returns features itself; image_inputs is the one other place.
FEEDS_FROM_DATA = ("capmodel.models", "capmodel.coco_utils")


def test_models_are_fed_from_a_data_dict_only_through_image_inputs():
    """Indexing a split's features by images (data["val_features"][idxs]) happens in
    capmodel.models.image_inputs, which adds the regions of a model that uses them."""
    bad = []
    for path in (SRC / "capmodel").rglob("*.py"):
        name = _module_name(path, SRC)
        if name in FEEDS_FROM_DATA or _within(name, "capmodel.datasets"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Subscript)
                    and _split_features_key(node.value.slice)):
                bad.append(f"{name} line {node.lineno}")
    assert not bad, "features indexed outside capmodel.models.image_inputs: " + ", ".join(bad)


# Calls that move or delete files: os.* and shutil.* by name, and Path's methods (rename and
# replace with one argument: str.replace takes two).
_OS_MOVES = {"os": {"replace", "rename", "renames", "remove", "unlink", "rmdir", "removedirs"},
             "shutil": {"rmtree", "move"}}
_PATH_MOVES = {"unlink": None, "rmdir": None, "rename": 1, "replace": 1}  # method: positional args (None: any)
# Modules outside capmodel.safety allowed to move or delete files, and why.
MOVES_OUTSIDE_SAFETY = {
    "capmodel.datasets.fetch": "a resumable download: its own .part file is renamed to the archive when complete, "
                               "and removed when its checksum is wrong, as is an archive this run downloaded "
                               "(never one placed by hand)",
}


def file_moves(path):
    """(line, call) of every call in the file at path that moves or deletes a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module in _OS_MOVES:
            found += [(node.lineno, f"from {node.module} import {a.name}") for a in node.names
                      if a.name in _OS_MOVES[node.module]]
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        name, owner = node.func.attr, node.func.value
        if isinstance(owner, ast.Name) and owner.id in _OS_MOVES:
            if name in _OS_MOVES[owner.id]:
                found.append((node.lineno, f"{owner.id}.{name}"))
        elif name in _PATH_MOVES and (_PATH_MOVES[name] is None or (
                len(node.args) == _PATH_MOVES[name] and not node.keywords)):
            found.append((node.lineno, f".{name}()"))
    return found


def test_files_are_moved_and_deleted_only_in_safety():
    """capmodel.safety holds the code that renames and deletes files (capmodel deletes only
    what it created and can prove it did), so it can be reviewed in one place."""
    bad = []
    for path in (SRC / "capmodel").rglob("*.py"):
        name = _module_name(path, SRC)
        if _within(name, "capmodel.safety") or name in MOVES_OUTSIDE_SAFETY:
            continue
        bad += [f"{name} line {line}: {call}" for line, call in file_moves(path)]
    assert not bad, "move or delete files through capmodel.safety:\n" + "\n".join(bad)


def test_the_move_check_sees_every_form(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("import os, shutil\nfrom os import unlink\nos.replace(a, b)\nshutil.rmtree(d)\n"
                      "p.unlink(missing_ok=True)\np.replace(q)\nq.rmdir()\n"
                      "s.replace('a', 'b')\nd.replace(year=1)\n")
    assert [line for line, _ in file_moves(source)] == [2, 3, 4, 5, 6, 7]
    assert all(name in {_module_name(p, SRC) for p in (SRC / "capmodel").rglob("*.py")}
               and file_moves(SRC / (name.replace(".", "/") + ".py")) for name in MOVES_OUTSIDE_SAFETY)


def _json_reads(path, strict):
    """(line, call) of every json.load / json.loads in the file at path; strict=False counts
    json.loads only of a file's text (x.read_text()), not of a string the code holds."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module == "json":
            found += [(node.lineno, f"from json import {a.name}") for a in node.names if a.name in ("load", "loads")]
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in
                ("load", "loads") and isinstance(node.func.value, ast.Name) and node.func.value.id == "json"):
            continue
        of_file = node.func.attr == "load" or any(
            isinstance(a, ast.Call) and isinstance(a.func, ast.Attribute) and a.func.attr in ("read_text", "read_bytes",
                                                                                            "read")
            for a in node.args)
        if strict or of_file:
            found.append((node.lineno, f"json.{node.func.attr}"))
    return found


def test_json_files_are_read_by_the_one_reader():
    """Every JSON file the package or a benchmark reads goes through
    capmodel.safety.jsonfile.read_json (one error style); in the package, nothing else
    decodes JSON either (a benchmark may parse a child process's printed JSON)."""
    root = SRC.parent
    bad = [f"{path.relative_to(root)} line {line}: {call}"
           for strict, paths in ((True, (SRC / "capmodel").rglob("*.py")), (False, (root / "benchmarks").glob("*.py")))
           for path in paths if path != SRC / "capmodel" / "safety" / "jsonfile.py"
           for line, call in _json_reads(path, strict)]
    assert not bad, "read JSON with capmodel.safety.jsonfile.read_json:\n" + "\n".join(bad)


def test_the_json_check_sees_every_form(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("import json\nfrom json import loads\njson.load(f)\njson.loads(p.read_text())\n"
                      "json.loads(out.stdout)\n")
    assert [line for line, _ in _json_reads(source, strict=False)] == [2, 3, 4]
    assert [line for line, _ in _json_reads(source, strict=True)] == [2, 3, 4, 5]


def _one_edit_apart(a, b):
    """Whether a and b differ by one inserted, deleted or replaced character."""
    if abs(len(a) - len(b)) > 1 or a == b:
        return False
    if len(a) == len(b):
        return sum(x != y for x, y in zip(a, b)) == 1
    short, long_ = sorted((a, b), key=len)
    return any(long_[:i] + long_[i + 1:] == short for i in range(len(long_)))


def test_no_two_modules_have_names_one_letter_apart():
    """A name one letter from another (setting / settings) reads as a typo of it."""
    names = sorted({p.stem for p in (SRC / "capmodel").rglob("*.py") if p.stem != "__init__"}
                   | {p.name for p in (SRC / "capmodel").rglob("*") if p.is_dir() and p.name != "__pycache__"})
    close = [f"{a} / {b}" for i, a in enumerate(names) for b in names[i + 1:] if _one_edit_apart(a, b)]
    assert not close, "module names one letter apart: " + ", ".join(close)
    assert _one_edit_apart("setting", "settings") and not _one_edit_apart("inputs", "outputs")


def test_the_cs231n_layer_module_stays_cs231n_sized():
    """rnn_layers is the learner's module: the readable layers, at most 500 lines; faster
    versions live in capmodel.kernels."""
    lines = len((SRC / "capmodel" / "rnn_layers.py").read_text().splitlines())
    assert lines <= 500, f"rnn_layers.py has {lines} lines"
