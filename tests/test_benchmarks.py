"""Smoke runs of the benchmark scripts, so that `make bench` keeps working.

One timed round each, no idle gaps: the figures mean nothing here, the scripts' checks
(the same loss, gradients and captions in both frameworks) and their tables do.
"""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(script, *args):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.slow
def test_fair_benchmark_checks_both_frameworks_and_writes_its_table(tmp_path):
    out = tmp_path / "latest.md"
    run("bench_fair.py", "--rounds", "1", "--warmup", "0", "--gap", "0", "--quiet-wait", "0",
        "--cases", "LSTM train step float32", "GRU greedy", "--out", str(out))
    table = out.read_text()
    assert "--cases 'LSTM train step float32' 'GRU greedy'" in table  # the command, quoted as typed
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines() if line.startswith("| ")}
    assert "loss and gradients agree" in rows["LSTM train step float32"]
    assert "captions equal" in rows["GRU greedy sample float32"]
    assert set(rows) == {"case", "LSTM train step float32", "GRU greedy sample float32"}


@pytest.mark.slow
def test_attention_benchmark_checks_both_frameworks_and_writes_its_table(tmp_path):
    out = tmp_path / "attention.md"
    run("bench_attention.py", "--rounds", "1", "--warmup", "0", "--gap", "0", "--quiet-wait", "0", "--regions", "9",
        "--region-dim", "64", "--max-length", "8", "--out", str(out))
    rows = {line.split(" | ")[0].lstrip("| "): line for line in out.read_text().splitlines() if line.startswith("| ")}
    assert "loss and gradients agree" in rows["attention LSTM train step float32"]
    assert "captions equal" in rows["attention LSTM greedy sample float32"]
    assert "L=9 regions of C=64" in out.read_text()


@pytest.mark.slow
def test_profile_accounts_for_the_whole_step(tmp_path):
    out = tmp_path / "profile.md"
    run("profile_step.py", "--rounds", "1", "--out", str(out))
    for cell in ("LSTM", "GRU"):
        lines = out.read_text().split(f"| {cell} section |")[1].split("**step total**")[0].splitlines()
        shares = [float(line.split(" | ")[-1].rstrip("% |")) for line in lines if line.endswith("% |")]
        assert len(shares) >= 10 and 97 <= sum(shares) <= 103  # sections add up to the step


def test_readme_and_docs_show_the_latest_results(tmp_path):
    """The speed figures in README.md and docs/benchmarks.md are what update_docs.py pastes
    from benchmarks/results: rerun it after a benchmark."""
    import shutil

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import update_docs
    finally:
        sys.path.pop(0)
    for rel in ("README.md", "docs/benchmarks.md", "benchmarks/results"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        copy = shutil.copytree if (ROOT / rel).is_dir() else shutil.copy
        copy(ROOT / rel, tmp_path / rel)
    update_docs.main(tmp_path)
    for rel in ("README.md", "docs/benchmarks.md"):
        assert (tmp_path / rel).read_text() == (ROOT / rel).read_text(), f"{rel} is stale: run benchmarks/update_docs.py"
    fair = update_docs.rows((ROOT / "benchmarks/results/latest.md").read_text())
    readme = (ROOT / "README.md").read_text()
    for label, case in update_docs.SUMMARY_CASES.items():
        assert f"| {label} | {fair[case][1].split()[0]} ms | {fair[case][2].split()[0]} ms | {fair[case][3]} |" in readme


@pytest.mark.slow
def test_buffer_benchmark_compares_both_variants(tmp_path):
    out = tmp_path / "buffers.md"
    run("bench_buffers.py", "--rounds", "1", "--warmup", "1", "--repeats", "1", "--out", str(out))
    rows = [line for line in out.read_text().splitlines() if line.startswith("| LSTM") or line.startswith("| GRU")]
    assert len(rows) == 4 and sum("reused (as shipped)" in r for r in rows) == 2


def test_scst_quality_compares_the_continuations(tmp_path):
    """The tiny .test config: the table has every run of both families, the SCST rows with
    their gain over the cross-entropy continuation."""
    out = run("scst_quality.py", "--work", str(tmp_path), "--config", str(ROOT / ".test" / "config" / "config.yaml"),
              "--families", "tiny_lstm", "tiny_transformer", "--epochs", "1", "--samples", "2", "--no-java")
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| tiny_")]
    assert [(r[0], r[1]) for r in rows] == [
        (f"| {f}", run) for f in ("tiny_lstm", "tiny_transformer") for run in (
            "cross-entropy (start)", "+1 epochs cross-entropy", "+1 epochs SCST, greedy baseline",
            "+1 epochs SCST, mean baseline")]
    for r in rows:
        assert 0 <= float(r[2]) <= 1 and r[3] == "n/a (no java)" and float(r[4]) >= 0
        assert r[5].rstrip(" |").endswith("%") == ("SCST" in r[1])


@pytest.mark.slow
def test_extraction_benchmark_measures_rate_memory_and_disk(tmp_path):
    out = tmp_path / "extraction.md"
    run("bench_extraction.py", "--encoder", "resnet50", "--pictures", "4", "--sizes", "20", "40", "--out", str(out))
    text = out.read_text()
    rate, peak, per_picture = next(line for line in text.splitlines() if line.startswith("| ") and " MB | " in line
                                   and " KB |" in line).strip("| ").split(" | ")
    assert float(rate) > 0 and float(peak.split()[0]) > 100 and float(per_picture.split()[0]) > 8  # 2048 float32
    assert "| COCO 2014 (Karpathy) | 123,287 |" in text
    assert [line.split(" | ")[0] for line in text.splitlines() if line.startswith("| 20") or line.startswith("| 40")] \
        == ["| 20", "| 40"]
