"""The package's import graph: dependencies point one way, and nothing imports in a circle.

capmodel.app (the application: CLI, pipeline, settings, reports, gradient-check suite)
may import the library; the library (everything else under src/capmodel) never imports
the application; capmodel.kernels and capmodel.safety (low-level helpers) import neither.
Every import statement counts, at module level or inside a function.
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
