"""The workflow on a real single-node SLURM cluster (started by .ci/slurm on 127.0.0.1).

These tests change the system (Debian packages slurm and munge, /etc/slurm, /etc/munge),
so they run only where the environment asks for it: CAPMODEL_TEST_SLURM=start (as root:
.ci/slurm installs and starts a cluster; .ci/run, i.e. CI, sets it), or SLURM_CONF of a
cluster that is already running. Elsewhere they are skipped with that reason.
"""

import csv
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TEST_CONFIG = ROOT / ".test" / "config" / "config.yaml"
# with the other readers of the session's workflow run (conftest.py), which runs is one of
pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.xdist_group("workflow_run")]
MODELS = ("tiny_rnn", "tiny_lstm", "tiny_lstm+scst", "tiny_transformer")  # of the .test config
HARD_TIMEOUT = 900  # seconds; a hung Snakemake ignores SIGTERM, so it is killed with SIGKILL


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if os.environ.get("SLURM_CONF") and shutil.which("sinfo"):
        yield os.environ["SLURM_CONF"], None  # a cluster the user started
        return
    if os.environ.get("CAPMODEL_TEST_SLURM") != "start":
        pytest.skip("set CAPMODEL_TEST_SLURM=start (as root: installs and starts a local SLURM cluster) or "
                    "export SLURM_CONF of a running cluster; CI does the former")
    if os.geteuid() != 0:
        pytest.fail("CAPMODEL_TEST_SLURM=start needs root to install and start SLURM")
    state = tmp_path_factory.mktemp("slurm")
    up = subprocess.run([str(ROOT / ".ci" / "slurm"), "up", str(state)], capture_output=True, text=True)
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        yield str(state / "slurm.conf"), state
    finally:
        subprocess.run([str(ROOT / ".ci" / "slurm"), "down", str(state)])


def snakemake(workdir, *args, config=TEST_CONFIG, env=None):
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", **(env or {})}
    cmd = ["timeout", "-s", "KILL", str(HARD_TIMEOUT), sys.executable, "-m", "snakemake", "-s",
           str(ROOT / "workflow" / "Snakefile"), "--directory", str(workdir), "--configfile", str(config), *args]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert r.returncode != 137, "snakemake hung and was killed after the hard timeout"
    return r


def _without_urls(path):
    with open(path) as f:
        return [{k: v for k, v in row.items() if k != "url"} for row in csv.DictReader(f)]


def _arrays(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def runs(cluster, request, tmp_path_factory):
    """The session's local run of the .test workflow (conftest.py) and one through SLURM."""
    conf, _ = cluster
    local = request.getfixturevalue("workflow_run")  # once the cluster is there: a skip runs nothing
    remote = tmp_path_factory.mktemp("slurm_run")
    r = snakemake(remote, "--workflow-profile", str(ROOT / "profiles" / "slurm"), "--slurm-keep-successful-logs",
                  env={"SLURM_CONF": conf})
    assert r.returncode == 0, (r.stdout + r.stderr)[-5000:]
    return local, remote, r.stdout + r.stderr


def test_jobs_ran_through_slurm(runs, cluster):
    _, remote, log = runs
    job_ids = set(re.findall(r"SLURM jobid (\d+)", log))
    rules = re.findall(r"^rule (\w+):", log, flags=re.M)
    assert len(job_ids) >= 13 and len(job_ids) == len([r for r in rules if r != "all"]), log[-3000:]
    logs = list((remote / ".snakemake" / "slurm_logs").rglob("*.log"))
    assert {p.stem for p in logs} >= job_ids  # one SLURM log per job id
    _, state = cluster
    if state is not None:  # the controller's own record of the allocations
        allocated = set(re.findall(r"Allocate JobId=(\d+)", (state / "slurmctld.log").read_text()))
        assert job_ids <= allocated


def test_slurm_outputs_equal_local(runs):
    local, remote, _ = runs
    for model in MODELS:
        a = _arrays(local / "results" / "models" / model / "model.npz")
        b = _arrays(remote / "results" / "models" / model / "model.npz")
        assert all(np.array_equal(a[k], b[k]) for k in a)
        for name in ("history.csv", "val.csv"):
            assert (local / "results" / "models" / model / name).read_text() == \
                (remote / "results" / "models" / model / name).read_text()
        # captions equal; the file:// image URLs name each run's own directory
        samples = [_without_urls(d / "results" / "models" / model / "samples_val.csv") for d in (local, remote)]
        assert samples[0] == samples[1] and len(samples[0]) == 16
    tables = [_without_column(d / "results" / "summary.csv", "train_seconds") for d in (local, remote)]
    assert tables[0] == tables[1] and len(tables[0]) == len(MODELS) + 1  # wall-clock time aside
    for name in (*MODELS, "summary"):
        assert (remote / "reports" / f"{name}.html").exists()


def test_training_jobs_get_their_threads_and_blas_uses_them(runs, cluster):
    """.test asks for 2 threads per training job: SLURM allocates 2 CPUs and BLAS runs 2 threads."""
    _, remote, log = runs
    for model in MODELS:
        assert "BLAS threads: 2" in (remote / "logs" / "train" / f"{model}.log").read_text()
    _, state = cluster
    if state is not None:
        train_ids = set(re.findall(r"SLURM jobid (\d+) \(log: \S*rule_(?:train|finetune)_model", log))
        cpus = dict(re.findall(r"Allocate JobId=(\d+) \S+ #CPUs=(\d+)", (state / "slurmctld.log").read_text()))
        assert len(train_ids) == len(MODELS) and {cpus[j] for j in train_ids} == {"2"}
        others = set(re.findall(r"SLURM jobid (\d+)", log)) - train_ids
        assert {cpus[j] for j in others} == {"1"}


def test_failing_job_fails_the_run(runs, cluster, tmp_path):
    conf, _ = cluster
    _, remote, _ = runs
    work = tmp_path / "w"
    shutil.copytree(remote, work, ignore=shutil.ignore_patterns(".snakemake"))
    cfg = tmp_path / "config.yaml"
    cfg.write_text(TEST_CONFIG.read_text() + "\nmodels:\n  tiny_rnn: {cell_type: rnn}\n"
                   "  boom: {cell_type: rnn, update_rule: sgd, learning_rate: 10.0, grad_clip: null}\n")
    r = snakemake(work, "--workflow-profile", str(ROOT / "profiles" / "slurm"), config=cfg, env={"SLURM_CONF": conf})
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert re.search(r"Error in rule train_model", out) and "boom" in out
    assert "training diverged at iteration" in (work / "logs" / "train" / "boom.log").read_text()
    assert not (work / "results" / "models" / "boom" / "model.npz").exists()


def _without_column(path, column):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return [{k: v for k, v in r.items() if k != column} for r in rows]
