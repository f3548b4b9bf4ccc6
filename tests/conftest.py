"""Shared fixtures."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from synthetic import random_data, random_resnet50_file


@pytest.fixture
def tiny_data():
    """20 train / 6 val images with two random captions each, 16-d features."""
    return random_data()


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory):
    """A small shapes dataset on disk (generated once per test session)."""
    from capmodel.datasets import shapes

    out = tmp_path_factory.mktemp("data") / "shapes"
    shapes.generate(out, num_train=60, num_val=12, seed=3)
    return out


@pytest.fixture(scope="session")
def gradcheck_table(tmp_path_factory):
    """The rows of one `capmodel gradcheck` run (the whole gradient-check suite), as written
    to its CSV table; tests/test_gradcheck_suite.py and tests/test_cli.py read them."""
    import csv

    from capmodel.app.cli import main

    out = tmp_path_factory.mktemp("gradcheck") / "g.csv"
    assert main(["gradcheck", "--out", str(out)]) == 0
    with open(out) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="session")
def workflow_run(tmp_path_factory):
    """One run of the whole workflow on the .test config (tests/test_workflow.py and
    tests/test_reports.py read it); Snakemake's output is kept in snakemake-output.txt."""
    root = Path(__file__).resolve().parents[1]
    work = tmp_path_factory.mktemp("wf")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    cmd = [sys.executable, "-m", "snakemake", "-s", str(root / "workflow" / "Snakefile"), "--directory", str(work),
           "--configfile", str(root / ".test" / "config" / "config.yaml"), "--cores", "2"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    (work / "snakemake-output.txt").write_text(r.stdout + r.stderr)
    return work


@pytest.fixture(scope="session")
def resnet50_file(tmp_path_factory):
    """A weights file of random ResNet-50 parameters, as torchvision saves a state_dict.
    Skips without torch (the optional `encoders` extra)."""
    pytest.importorskip("torch")
    return random_resnet50_file(tmp_path_factory.mktemp("weights") / "resnet50.pt", seed=1)


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
