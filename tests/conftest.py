"""Shared fixtures."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from synthetic import random_data


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
