"""Shared fixtures, and how the suite spreads over pytest-xdist workers.

Each expensive computation runs once per test session and is shared (docs/development.md,
"Tests"): the session fixtures below make their files through `once`, which under
pytest-xdist lets the first worker that asks make them while the others wait and reuse them.
Tests sharing a module-scoped fixture run on one worker, so it too is made once; the tests
that read the workflow run (or the gradient-check table it holds) run on one worker, in the
order of their files, since one of them moves the run directory away for a while. The workers
take that group first and the other units longest first, by their times in the last runs
(a scheduler below puts each group on one worker: xdist's own loadgroup needs pytest < 9).
"""

import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from filelock import FileLock

from synthetic import random_data, random_resnet50_file

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW_GROUP = "workflow_run"  # the xdist group of the tests that read the workflow run
WORKFLOW_FIXTURES = ("workflow_run", "gradcheck_table")
_WORKFLOW_IN_SESSION = pytest.StashKey[bool]()
GROUPS_FILE = "capmodel_groups"  # key of the workers' input: where they write {test: group}
_GROUPS_DIR = pytest.StashKey[Path]()
DURATIONS = "capmodel/durations"  # pytest's cache (.pytest_cache): {test: seconds in its last run}
_timed = {}


def once(tmp_path_factory, name, make):
    """The path tmp/name, made by make(path) once per test session, then shared.

    Under pytest-xdist the workers share the directory above their own temporary
    directories; the first worker to ask makes the file or directory under a lock (its
    absolute path stays what make saw) and the others wait for it (xdist's documented
    pattern for a session fixture run once). A failure is kept, and every worker asking
    later fails with it instead of making it again."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    shared = root / "shared"
    shared.mkdir(exist_ok=True)
    path, done, failed = shared / name, shared / f"{name}.done", shared / f"{name}.failed"
    with FileLock(shared / f"{name}.lock"):
        if failed.exists():
            pytest.fail(f"making {name} failed in another worker of this session:\n{failed.read_text()}")
        if not done.exists():
            try:
                make(path)
            except BaseException as e:
                if not isinstance(e, pytest.skip.Exception):  # a skip is asked again, and skips again
                    failed.write_text(f"{type(e).__name__}: {e}"[-3000:])
                raise
            done.touch()
    return path


def pytest_collection_modifyitems(config, items):
    """Groups for --dist loadgroup, and under xdist the longest work first (LPT)."""
    # tryfirst (below): before -m deselects items and before xdist reads the groups
    for item in items:
        fixtures = item.fixturenames
        if item.get_closest_marker("xdist_group"):
            continue  # a group of its own choosing
        if any(f in fixtures for f in WORKFLOW_FIXTURES):
            item.add_marker(pytest.mark.xdist_group(WORKFLOW_GROUP))
            continue
        defs = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
        shared = sorted(n for n in fixtures if n in defs and defs[n][-1].scope in ("module", "class"))
        if shared:  # made once per module: its tests on one worker
            item.add_marker(pytest.mark.xdist_group(f"{item.module.__name__}:{shared[0]}"))
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    groups = {item.nodeid: item.get_closest_marker("xdist_group").args[0] for item in items
              if item.get_closest_marker("xdist_group")}
    out = Path(config.workerinput[GROUPS_FILE])  # read by GroupScheduling in the controller
    partial = out.with_name(f"{out.name}.{os.environ['PYTEST_XDIST_WORKER']}")
    partial.write_text(json.dumps(groups))
    partial.replace(out)
    # The workers take units (a group, or one test) in this order as they become free: the
    # workflow run's group first (the longest chain), then the others by their time in the
    # last runs, longest first; a test not timed yet counts 5 s if marked slow, else nothing.
    timed = config.cache.get(DURATIONS, {}) if getattr(config, "cache", None) else {}
    unit, first, cost = {}, {}, {}
    for i, item in enumerate(items):
        mark = item.get_closest_marker("xdist_group")
        unit[item] = u = mark.args[0] if mark else i
        first.setdefault(u, i)
        guess = 5.0 if item.get_closest_marker("slow") else 0.0
        cost[u] = cost.get(u, 0.0) + timed.get(item.nodeid, guess)
    rank = {u: (u != WORKFLOW_GROUP, -cost[u], i) for u, i in first.items()}
    items.sort(key=lambda item: rank[unit[item]])


pytest_collection_modifyitems = pytest.hookimpl(tryfirst=True)(pytest_collection_modifyitems)


BLAS_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")  # as Snakemake sets them


def pytest_configure(config):
    workers = getattr(config.option, "numprocesses", None)
    if workers and not os.environ.get("PYTEST_XDIST_WORKER"):
        config.stash[_GROUPS_DIR] = Path(tempfile.mkdtemp(prefix="capmodel-xdist-"))
        # The cores shared out among the workers (which inherit this environment, as do the
        # processes they start): one worker per core gets one BLAS (and torch) thread, where
        # each worker's default of one per core oversubscribes them, and the waiting threads
        # spin on the cores the other workers need. A value set in the environment wins;
        # tests of threads set their own (threadpoolctl, workers=, Snakemake's threads).
        threads = max(1, (os.cpu_count() or 1) // int(workers))
        for name in BLAS_VARIABLES:
            os.environ.setdefault(name, str(threads))


def pytest_unconfigure(config):
    if _GROUPS_DIR in config.stash:
        shutil.rmtree(config.stash[_GROUPS_DIR], ignore_errors=True)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    # xdist's controller tells each worker where to write the groups of the tests it collected
    node.workerinput[GROUPS_FILE] = str(node.config.stash[_GROUPS_DIR] / "groups.json")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """--dist loadgroup as xdist documents it: the tests of one xdist_group on one worker.

    xdist 3.8 marks a test's group by appending it to the test's node id, which pytest 9 no
    longer lets a plugin change, so every test would be its own unit; this scheduler reads the
    groups the workers wrote instead. The units go out in the order of the collection, which
    pytest_collection_modifyitems gives."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    groups_file = config.stash[_GROUPS_DIR] / "groups.json"

    class GroupScheduling(LoadScopeScheduling):
        groups = None

        def _split_scope(self, nodeid):
            if self.groups is None:  # written before the workers reported their collections
                self.groups = json.loads(groups_file.read_text())
            return self.groups.get(nodeid, nodeid)

    return GroupScheduling(config, log)


def pytest_runtest_logreport(report):
    # seconds per test (setup, call and teardown) in the process that reports: xdist's controller
    # or the one pytest process; saved for the order above at the end of the session
    _timed[report.nodeid] = _timed.get(report.nodeid, 0.0) + report.duration


def pytest_sessionfinish(session):
    cache = getattr(session.config, "cache", None)
    if _timed and cache is not None and not os.environ.get("PYTEST_XDIST_WORKER"):
        cache.set(DURATIONS, {**cache.get(DURATIONS, {}), **{k: round(v, 3) for k, v in _timed.items()}})


def pytest_collection_finish(session):
    # after deselection: does this session run the workflow? (gradcheck_table reads its table then)
    session.config.stash[_WORKFLOW_IN_SESSION] = any("workflow_run" in item.fixturenames for item in session.items)


@pytest.fixture
def tiny_data():
    """20 train / 6 val images with two random captions each, 16-d features."""
    return random_data()


@pytest.fixture
def one_blas_thread():
    """BLAS on one thread for the whole test, set once (capmodel.kernels.parallel.one_blas_thread),
    for a test that evaluates an attention model's loss thousands of times (numeric gradients):
    each evaluation would otherwise ask threadpoolctl for the thread count, a scan of the loaded
    libraries that costs more than the loss itself. The kernels take the same path (their
    thread count is the one saved when the limit was set); only the scans are saved."""
    from capmodel.kernels import parallel

    with parallel.one_blas_thread():
        yield


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory):
    """A small shapes dataset on disk (60 train / 12 val images, seed 3; made once per session).
    Read it, never change it: copy it first (shutil.copytree) to alter it."""
    from capmodel.datasets import shapes

    return once(tmp_path_factory, "shapes", lambda path: shapes.generate(path, num_train=60, num_val=12, seed=3))


# the settings of tiny_model
TINY_MODEL = {"cell_type": "rnn", "hidden_dim": 8, "wordvec_dim": 4, "num_epochs": 1, "batch_size": 50,
              "print_every": 1000}


@pytest.fixture(scope="session")
def tiny_model(shapes_dir, tmp_path_factory):
    """A trained model's directory (model.npz, model.json, its records): a tiny RNN (TINY_MODEL)
    trained for one epoch on shapes_dir, for tests that need any trained model. Copy it to alter it."""
    from capmodel.app import pipeline

    return once(tmp_path_factory, "tiny_model", lambda out: pipeline.train(shapes_dir, out, TINY_MODEL, verbose=False))


@pytest.fixture(scope="session")
def gradcheck_table(request, tmp_path_factory):
    """The rows of one `capmodel gradcheck` run (the whole gradient-check suite, seed 0), as
    written to its CSV table; tests/test_gradcheck_suite.py and tests/test_cli.py read them.
    When the session runs the workflow, they are the table of its gradcheck job, the same
    command with the same seed, so that the suite runs once; otherwise a run of their own."""
    from capmodel.app.cli import main

    if request.config.stash.get(_WORKFLOW_IN_SESSION, False):
        path = request.getfixturevalue("workflow_run") / "results" / "gradcheck.csv"
    else:
        def run(out):
            assert main(["gradcheck", "--out", str(out)]) == 0

        path = once(tmp_path_factory, "gradcheck.csv", run)
    with open(path) as f:
        return list(csv.DictReader(f))


def snakemake_cmd(workdir, *args, config=None):
    """The command that runs the workflow in workdir with the .test config (or config) and args,
    and the environment it runs in (the venv's bin first on the PATH, as the jobs need)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "workflow" / "Snakefile"), "--directory",
           str(workdir), "--configfile", str(config or ROOT / ".test" / "config" / "config.yaml"), *args]
    return cmd, env


@pytest.fixture(scope="session")
def workflow_run(tmp_path_factory):
    """One run of the whole workflow on the .test config, its directory (tests/test_workflow.py,
    tests/test_reports.py and the gradcheck_table read it); Snakemake's output is kept in
    snakemake-output.txt. The tests that use it run on one worker (see the module docstring):
    read it, or copy it (without .snakemake) to run Snakemake on it again."""

    def run(work):
        cmd, env = snakemake_cmd(work, "--cores", "2")
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        assert r.returncode == 0, r.stderr[-3000:]
        (work / "snakemake-output.txt").write_text(r.stdout + r.stderr)

    return once(tmp_path_factory, "workflow_run", run)


@pytest.fixture(scope="session")
def resnet50_file(tmp_path_factory):
    """A weights file of random ResNet-50 parameters, as torchvision saves a state_dict.
    Skips without torch (the optional `encoders` extra)."""
    pytest.importorskip("torch")
    return once(tmp_path_factory, "resnet50.pt", lambda path: random_resnet50_file(path, seed=1))


@pytest.fixture(scope="session")
def torchvision():
    """torchvision's own models and transforms, to check capmodel.encoders against.

    The registry's torchvision wheel is a CUDA build whose compiled ops do not load with the
    CPU torch; installed without dependencies (`make venv` does), its pure-Python model
    definitions and transforms work once the two operators its import registers fake
    kernels for (torchvision::nms, torchvision::qnms) are declared. Skips without torch or
    torchvision."""
    import importlib

    torch = pytest.importorskip("torch")
    if importlib.util.find_spec("torchvision") is None:
        pytest.skip("torchvision is not installed (make venv installs it with --no-deps)")
    try:
        return importlib.import_module("torchvision")
    except RuntimeError as e:
        if "torchvision::" not in str(e):
            raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]  # the failed import left half-initialised modules
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
    module = importlib.import_module("torchvision")
    module._capmodel_test_ops = lib  # keep the definitions alive as long as the module
    return module
