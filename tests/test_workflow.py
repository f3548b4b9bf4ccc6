"""End-to-end tests of the Snakemake workflow on the .test configuration."""

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from capmodel.app.workflow_config import source_revision
from capmodel.datasets import features as feat
from capmodel.safety.atomic import sha256_of

ROOT = Path(__file__).resolve().parents[1]
TEST_CONFIG = ROOT / ".test" / "config" / "config.yaml"
pytestmark = pytest.mark.slow
BLAS_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")  # Snakemake sets them to threads


def snakemake(workdir, *args, config=TEST_CONFIG, timeout=600):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "workflow" / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(config), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def test_run(workflow_run):
    return workflow_run


def test_dry_run_lists_every_stage(dry_run):
    assert dry_run.returncode == 0, dry_run.stderr
    for rule in ("make_shapes_data", "gradcheck", "train_model", "sample_captions", "baseline_captions",
                 "evaluate_captions", "summarize", "report_model", "report_summary"):
        assert rule in dry_run.stdout


def test_snakemake_finds_the_workflow_from_the_repository_root(dry_run):
    # The catalog's layout: workflow/Snakefile, which plain `snakemake` (and `make run`) finds
    # when started in the repository root, as the dry run is (without -s).
    assert (ROOT / "workflow" / "Snakefile").is_file() and not (ROOT / "Snakefile").exists()
    assert "-s" not in dry_run.args and "--snakefile" not in dry_run.args
    assert dry_run.returncode == 0, dry_run.stderr[-2000:]
    assert "report_summary" in dry_run.stdout


def test_every_job_asks_for_the_resources_of_its_kind(tmp_path):
    cfg = _config_with(tmp_path, "resources: {train_threads: 1, train_mem_mb: 1234, train_runtime: 56,"
                                 " small_mem_mb: 789, small_runtime: 12}\n")
    r = snakemake(tmp_path / "w", "-n", config=cfg)
    assert r.returncode == 0, r.stderr[-2000:]
    jobs = re.findall(r"^rule (\w+):\n(.*?)(?=^\S|\Z)", r.stdout, re.S | re.M)
    for rule, body in jobs:
        resources = dict(re.findall(r"\b(mem_mb|runtime)=(\d+)", body))
        if rule in ("all", "model_settings", "sample_settings", "source_revision"):
            assert resources == {}, rule  # local rules: run by Snakemake itself, never submitted
        elif rule in ("train_model", "finetune_model"):
            assert resources == {"mem_mb": "1234", "runtime": "56"}, body
        else:
            assert resources == {"mem_mb": "789", "runtime": "12"}, (rule, body)
    assert {"make_shapes_data", "gradcheck", "train_model", "finetune_model", "report_summary"} <= {
        rule for rule, _ in jobs}


def test_model_wildcard_matches_only_configured_names(tmp_path):
    # '.' in a model name is literal: results/models/aXb/ is no path of model 'a.b'.
    cfg = _config_with(tmp_path, "models:\n  a.b: {cell_type: rnn}\n")
    r = snakemake(tmp_path / "w", "-n", "results/models/a.b/metrics.json", "reports/a.b.html", config=cfg)
    assert r.returncode == 0, r.stderr[-2000:]
    for target in ("results/models/aXb/model.npz", "results/models/aXb/metrics.json", "reports/aXb.html"):
        r = snakemake(tmp_path / "w", "-n", target, config=cfg)
        assert r.returncode != 0 and f"No rule to produce {target}" in r.stdout + r.stderr, target


# Snakemake under an audit hook that reports every process the workflow's own code starts
# (the Snakefile, the .smk files, capmodel): the nearest frame outside the standard library
# decides, so processes of Snakemake itself or of an imported library (h5py runs `uname -p`
# when imported) are not the workflow's.
_AUDITED_SNAKEMAKE = """
import sys
import sysconfig

own = tuple(sys.argv.pop(1).split(","))
stdlib = (sysconfig.get_path("stdlib"), "<")


def hook(event, args):
    if event in ("subprocess.Popen", "os.system", "os.posix_spawn", "os.exec", "os.spawn", "os.fork"):
        frame = sys._getframe(1)
        while frame is not None and frame.f_code.co_filename.startswith(stdlib):
            frame = frame.f_back
        if frame is not None and frame.f_code.co_filename.startswith(own):
            print(f"PROCESS FROM THE WORKFLOW: {event} {args!r:.200} at {frame.f_code.co_filename}",
                  file=sys.stderr)


sys.addaudithook(hook)
from snakemake.cli import main

main()
"""


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """One dry run of the .test config, as a user starts Snakemake in the repository root
    (`snakemake -n`, which finds workflow/Snakefile), under the audit hook above: the
    tests of what parsing does and of the jobs planned read it."""
    tmp = tmp_path_factory.mktemp("dry_run")
    script = tmp / "audited_snakemake.py"
    script.write_text(_AUDITED_SNAKEMAKE)
    own = ",".join(str(ROOT / d) + os.sep for d in ("workflow", "src"))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([sys.executable, str(script), own, "-n", "--directory", str(tmp / "w"),
                           "--configfile", str(TEST_CONFIG)], cwd=ROOT, capture_output=True, text=True, env=env)


def test_parsing_the_workflow_starts_no_process(dry_run):
    assert dry_run.returncode == 0, dry_run.stderr[-2000:]
    assert "source_revision" in dry_run.stdout  # the revision is read by a job instead
    assert "PROCESS FROM THE WORKFLOW" not in dry_run.stderr, dry_run.stderr[-2000:]


def test_summary_report_shows_the_source_revision(test_run):
    revision = source_revision(ROOT / "workflow")
    html = (test_run / "reports" / "summary.html").read_text()
    assert revision.replace("+uncommitted-changes", " (with uncommitted changes)") in html
    assert not (test_run / "results" / "source_revision.json").exists()  # temp(): made for the report only


def test_workflow_catalog_metadata():
    import yaml

    meta = yaml.safe_load((ROOT / ".snakemake-workflow-catalog.yml").read_text())
    usage = meta["usage"]
    assert set(usage) == {"mandatory-flags", "software-stack-deployment", "report"}
    assert usage["mandatory-flags"]["desc"].strip() and usage["mandatory-flags"]["flags"].startswith("--cores ")
    assert set(usage["software-stack-deployment"]) == {"conda", "apptainer", "apptainer+conda"}
    assert all(isinstance(v, bool) for v in usage["software-stack-deployment"].values())
    assert usage["report"] is True  # test_snakemake_report makes one
    # The standardized layout the catalog checks.
    for path in ("workflow/Snakefile", "config/config.yaml", "config/README.md"):
        assert (ROOT / path).is_file(), path


# The one finding lint is allowed: the rules name no conda environment or container. None would
# be true: environment.yml installs capmodel with `pip install -e .`, which does not resolve where
# `--sdm conda` copies the file, and there is no image; the virtualenv of `make venv` is the
# software stack (docs/workflow.md). Every other finding fails the test.
NO_ENVIRONMENT_LINT = "Specify a conda environment or container for each rule."


@pytest.mark.parametrize("config", [ROOT / "config" / "config.yaml", TEST_CONFIG], ids=["default", "test"])
def test_lint_finds_nothing_but_the_environments_the_workflow_does_not_claim(tmp_path, config):
    # As a user runs it: from the repository root, where Snakemake finds workflow/Snakefile
    # (--directory keeps .snakemake/ out of the checkout).
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    r = subprocess.run([sys.executable, "-m", "snakemake", "--lint", "--directory", str(tmp_path),
                        "--configfile", str(config)], cwd=ROOT, capture_output=True, text=True, env=env)
    out = r.stdout + r.stderr
    headers = re.findall(r"^Lints for (.*)$", out, re.M)
    findings = re.findall(r"^    \* (.*?):?$", out, re.M)
    assert headers and all(h.startswith("rule ") for h in headers), out[-3000:]  # none for the Snakefile itself
    assert findings == [NO_ENVIRONMENT_LINT] * len(headers), out[-3000:]  # one per rule, that one
    rules = {h.split()[1] for h in headers}
    assert {"make_shapes_data", "train_model", "report_summary"} <= rules and "conda:" not in "".join(
        p.read_text() for p in (ROOT / "workflow").rglob("*.smk"))


def test_every_rule_runs_a_shell_command():
    # Thin rules over the capmodel CLI: Snakemake runs a `run:` block in a new Snakemake process,
    # which parses the whole workflow again (seconds per job), and a shell command in a thread.
    rules = {p.name: re.findall(r"^(?:use )?rule (\w+)", p.read_text(), re.M) for p in (ROOT / "workflow").rglob("*.smk")}
    assert sum(map(len, rules.values())) >= 15, rules
    for path in (ROOT / "workflow").rglob("*.smk"):
        assert not re.search(r"^    (run|script|wrapper):", path.read_text(), re.M), path.name


def test_full_run_outputs(test_run):
    with open(test_run / "results" / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["model"] for r in rows] == ["tiny_lstm", "tiny_lstm+scst", "tiny_rnn", "tiny_transformer", "baseline"]
    assert all(0 <= float(r["Bleu_4"]) <= 1 and float(r["CIDEr"]) >= 0 for r in rows)
    assert rows[3]["cell_type"] == "transformer" and float(rows[3]["val_loss"]) > 0
    for name in ("tiny_lstm", "tiny_lstm+scst", "tiny_rnn", "tiny_transformer", "summary"):
        html = (test_run / "reports" / f"{name}.html").read_text()
        assert html.count("data:image/png;base64") >= 2, name  # figures embedded: self-contained
        assert "<table" in html and "Bleu_4" in html
    with open(test_run / "results" / "models" / "tiny_lstm" / "samples_val.csv") as f:
        first = next(csv.DictReader(f))
    assert f">{first['generated']}<" in (test_run / "reports" / "tiny_lstm.html").read_text()
    meta = json.loads((test_run / "results" / "models" / "tiny_rnn" / "model.json").read_text())
    assert meta["model"]["cell_type"] == "rnn" and meta["iterations"] == 40
    data_pca = test_run / "resources" / "data" / "shapes" / feat.PCA_FILE
    assert feat.read_record(data_pca.parent)["grid"] == 4  # the shapes data set's grid, by default
    for name in ("tiny_rnn", "tiny_lstm+scst"):  # self-contained: the data set's encoder record goes along
        model_dir = test_run / "results" / "models" / name
        pca_sha = json.loads((model_dir / "model.json").read_text())["encoder"]["pca_sha256"]
        assert json.loads((model_dir / feat.MODEL_RECORD_FILE).read_text())["pca_sha256"] == pca_sha
        assert sha256_of(model_dir / feat.MODEL_PCA_FILE) == pca_sha == sha256_of(data_pca)
    with open(test_run / "results" / "gradcheck.csv") as f:
        assert all(r["ok"] == "True" for r in csv.DictReader(f))
    assert not (test_run / "results" / "resume" / "tiny_rnn").exists()


def test_rerun_does_nothing(test_run):
    r = snakemake(test_run, "-n")
    assert r.returncode == 0 and "Nothing to be done" in r.stdout + r.stderr


def test_snakemake_report(test_run):
    r = snakemake(test_run, "--report", "report.html")
    assert r.returncode == 0, r.stderr[-2000:]
    assert (test_run / "report.html").stat().st_size > 10000


def _config_with(tmp_path, text):
    cfg = tmp_path / "config.yaml"
    cfg.write_text(TEST_CONFIG.read_text() + "\n" + text)
    return cfg


@pytest.mark.parametrize("extra, message", [
    ("sampel: {method: beam}", "config error: the config: unknown key 'sampel'; known: data, evaluate"),
    ("sample: {method: beam, beam_size: three}", "config error: sample.beam_size: 'three' is not of type 'integer'"),
    ("train_defaults: {hiden_dim: 3}", "config error: train_defaults: unknown key 'hiden_dim'; known: "),
    ("models: {bad: {cell_type: lstn}}", "config error: models.bad.cell_type: 'lstn' is not one of ['rnn'"),
    ("models: {bad: {seed: -1}}", "config error: models.bad.seed: -1 is less than the minimum of 0"),
])
def test_config_errors_fail_at_start_with_one_short_message(tmp_path, extra, message):
    r = snakemake(tmp_path, "-n", config=_config_with(tmp_path, extra))
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert message in out, out[-2000:]
    assert len(out.splitlines()) < 10, out  # not a dump of the whole schema
    assert not (tmp_path / "results").exists()


def test_failing_stage_leaves_no_partial_outputs(test_run, tmp_path):
    work = tmp_path / "w"
    shutil.copytree(test_run, work, ignore=shutil.ignore_patterns(".snakemake"))  # up to date: only boom runs
    # A model whose training diverges: plain SGD with a learning rate of 10.
    cfg = _config_with(tmp_path, "models:\n  tiny_rnn: {cell_type: rnn}\n  boom: {cell_type: rnn, update_rule: sgd,"
                                 " learning_rate: 10.0, grad_clip: null}\n")
    r = snakemake(work, "--cores", "1", "--keep-going", config=cfg)
    assert r.returncode != 0
    assert "training diverged at iteration" in (work / "logs" / "train" / "boom.log").read_text()
    assert sorted(p.name for p in (work / "results" / "models" / "boom").iterdir()) == ["settings.json"]
    assert not (work / "reports" / "boom.html").exists()
    assert (work / "results" / "models" / "tiny_rnn" / "model.npz").exists()  # untouched


def test_snakefmt_check():
    files = [ROOT / "workflow" / "Snakefile", *sorted((ROOT / "workflow").rglob("*.smk"))]
    assert len(files) >= 9  # the Snakefile and one .smk per stage, common.smk among them
    r = subprocess.run([sys.executable, "-m", "snakefmt", "--check", *map(str, files)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"All {len(files)} file(s) would be left unchanged" in r.stderr, r.stderr


def test_killed_training_job_resumes_on_rerun(test_run, tmp_path):
    """SIGKILL Snakemake in the middle of a training job; the rerun resumes from the checkpoint."""
    import signal
    import time

    # 600 iterations: killed at the first checkpoint (20), the rest leaves seconds to see it; the rerun trains them
    cfg = _config_with(tmp_path, "models:\n  tiny_rnn: {cell_type: rnn, num_epochs: 30, checkpoint_every: 20}\n")
    work = tmp_path / "w"
    # the data set and gradient-check table of the session's run (copies keep their times): only training runs here
    shutil.copytree(test_run / "resources", work / "resources")
    (work / "results").mkdir()
    shutil.copy2(test_run / "results" / "gradcheck.csv", work / "results" / "gradcheck.csv")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "workflow" / "Snakefile"), "--directory", str(work),
           "--configfile", str(cfg), "--cores", "2", "results/models/tiny_rnn/model.npz"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    resume = work / "results" / "resume" / "tiny_rnn"
    deadline = time.time() + 120
    while time.time() < deadline and not list(resume.glob("ckpt-*.json")):  # kill at the first checkpoint
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list(resume.glob("ckpt-*.json")), "no checkpoint was written before the kill"
    assert not (work / "results" / "models" / "tiny_rnn" / "model.npz").exists()
    assert snakemake(work, "--unlock", config=cfg).returncode == 0
    r = snakemake(work, "--cores", "2", "results/models/tiny_rnn/model.npz", config=cfg)
    assert r.returncode == 0, r.stderr[-2000:]
    log = (work / "logs" / "train" / "tiny_rnn.log").read_text()
    resumed_at = int(re.search(r"Resumed from .* at iteration (\d+)", log).group(1))
    assert 0 < resumed_at < 600  # 400 captions / batch 20 * 30 epochs
    assert json.loads((work / "results" / "models" / "tiny_rnn" / "model.json").read_text())["iterations"] == 600


def test_run_says_where_the_reports_are_and_training_logs_eta(test_run):
    out = (test_run / "snakemake-output.txt").read_text()
    assert "capmodel: reports written:" in out
    for name in ("summary", "tiny_lstm", "tiny_rnn", "tiny_transformer"):
        assert f"{test_run / 'reports' / name}.html" in out
    assert f"capmodel: summary table: {test_run / 'results' / 'summary.md'}" in out
    log = (test_run / "logs" / "train" / "tiny_rnn.log").read_text()
    assert re.search(r"\(Iteration 1 / 40\) loss: [0-9.]+ \[elapsed \d+:\d\d, ETA \d+:\d\d\]", log), log
    assert "BLAS threads: 2" in log  # resources.train_threads, through the variables Snakemake sets


def test_a_data_set_at_any_path_is_used_as_it_is(shapes_dir, tmp_path):
    cfg = _config_with(tmp_path, f"data: {{source: path, path: {shapes_dir}}}\n")
    r = snakemake(tmp_path / "w", "-n", config=cfg)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "make_shapes_data" not in r.stdout and "train_model" in r.stdout and str(shapes_dir) in r.stdout
    r = snakemake(tmp_path / "w", "-n", config=_config_with(tmp_path, "data: {source: path}\n"))
    assert r.returncode != 0 and "data.source is 'path' but data.path is not set" in r.stdout + r.stderr


def test_jobs_run_without_the_virtualenv_on_the_path(tmp_path):
    """Snakemake started as .venv/bin/snakemake from a shell where the venv is not active:
    the jobs call the interpreter that runs Snakemake, not whatever `capmodel` PATH has."""
    env = {**os.environ, "PATH": "/usr/bin:/bin"}
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "workflow" / "Snakefile"), "--directory",
           str(tmp_path), "--configfile", str(TEST_CONFIG), "--cores", "1", "resources/data/shapes"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "resources" / "data" / "shapes" / "coco2014_captions.h5").exists()


def test_source_images_extracts_in_shards_and_equals_one_from_folder_run(tmp_path):
    """data: {source: images, shards: 3}: three extraction jobs and one merge, whose data
    set equals `capmodel data from-folder` run once on the same pictures."""
    sys.path.insert(0, str(ROOT / "tests"))
    from synthetic import photo_folder

    caps = photo_folder(tmp_path / "photos", copies=6)  # 36 pictures
    (tmp_path / "captions.csv").write_text("image,caption\n" + "".join(f"{n},{c}\n" for n, cs in caps.items()
                                                                       for c in cs))
    cfg = _config_with(tmp_path, "data: {source: images, images: %s, captions: %s, shards: 3, grid: 2, grid_pca: 16}"
                       % (tmp_path / "photos", tmp_path / "captions.csv"))
    dry = snakemake(tmp_path / "w", "-n", config=cfg)
    assert dry.returncode == 0, dry.stderr[-2000:]
    jobs = dict(re.findall(r"^(extract_features|make_images_data|make_shapes_data)\s+(\d+)$", dry.stdout, re.M))
    assert jobs == {"extract_features": "3", "make_images_data": "1"}
    r = snakemake(tmp_path / "w", "--cores", "2", "resources/data/images", config=cfg)
    assert r.returncode == 0, r.stderr[-3000:]
    # from-folder with the extraction jobs' threads (resources.train_threads), set as Snakemake sets
    # them: results are bit-identical for a given thread count, and the test session may run fewer
    direct = subprocess.run([str(Path(sys.executable).parent / "capmodel"), "data", "from-folder",
                             str(tmp_path / "photos"), str(tmp_path / "captions.csv"), str(tmp_path / "direct"),
                             "--grid", "2", "--grid-pca", "16", "--no-progress"], capture_output=True, text=True,
                            env={**os.environ, **dict.fromkeys(BLAS_VARIABLES, "2")})
    assert direct.returncode == 0, direct.stderr[-3000:]
    made = tmp_path / "w" / "resources" / "data" / "images"
    files = sorted(p.name for p in (tmp_path / "direct").iterdir())
    assert files == sorted(p.name for p in made.iterdir() if p.name != ".snakemake_timestamp")
    assert "references.json" in files and "train2014_grid.h5" in files
    from capmodel.datasets import format as fmt

    for name in files:
        if name.endswith("_urls.txt"):  # relative to each data set: the same pictures
            lines = [fmt.image_locations(d, fmt.read_urls(d, name.split("2014")[0])) for d in (made, tmp_path / "direct")]
            assert lines[0] == lines[1] and len(lines[0]) > 0
        elif (made / name).is_file():
            assert (made / name).read_bytes() == (tmp_path / "direct" / name).read_bytes(), name
    shards = tmp_path / "w" / "resources" / "data" / "images.features"
    assert sorted(p.name for p in shards.iterdir()) == \
        sorted(f"shard-{i}-of-3.{ext}" for i in (1, 2, 3) for ext in ("h5", "json"))
    # An edited caption reruns the jobs (Snakemake follows the captions file), but the
    # extraction keeps its features files, which hold the same pictures; the data set has the new words.
    stamps = {p.name: p.stat().st_mtime_ns for p in shards.glob("*.h5")}
    captions = tmp_path / "captions.csv"
    captions.write_text(captions.read_text().replace(",a red circle\n", ",a scarlet circle\n", 1))
    r = snakemake(tmp_path / "w", "--cores", "2", "resources/data/images", config=cfg)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "extract_features" in r.stdout + r.stderr
    assert {p.name: p.stat().st_mtime_ns for p in shards.glob("*.h5")} == stamps
    assert "scarlet" in (made / "coco2014_vocab.json").read_text()
    # a missing images folder is a config error at the start, naming the key
    bad = _config_with(tmp_path, "data: {source: images, images: nowhere, captions: %s}" % (tmp_path / "captions.csv"))
    r = snakemake(tmp_path / "w2", "-n", config=bad)
    assert r.returncode != 0 and "data.images nowhere: no such directory" in r.stdout + r.stderr


def test_scst_null_switches_the_fine_tuning_off_in_a_second_configfile(tmp_path):
    off = tmp_path / "off.yaml"
    off.write_text("models: {tiny_lstm: {scst: null}}\n")  # merged onto the .test config's tiny_lstm
    r = snakemake(tmp_path / "w", "-n", "--configfile", str(TEST_CONFIG), str(off))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "train_model" in r.stdout and "finetune_model" not in r.stdout and "tiny_lstm+scst" not in r.stdout


def test_snakemake_gives_a_job_its_threads_through_the_blas_variables(tmp_path):
    # The rules rely on this instead of prefixing their commands with OMP_NUM_THREADS=... : a job
    # with `threads: N` runs with OpenMP, OpenBLAS and MKL limited to N (here 3, more than the machine's
    # cores, so no library default can give the same number).
    (tmp_path / "Snakefile").write_text(
        'rule show:\n    output: "env.txt"\n    threads: 3\n'
        '    shell: "env | grep -E \'^(OMP|OPENBLAS|MKL)_NUM_THREADS=\' | sort > {output}"\n')
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    r = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(tmp_path / "Snakefile"), "--directory",
                        str(tmp_path), "--cores", "4"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "env.txt").read_text().split() == ["MKL_NUM_THREADS=3", "OMP_NUM_THREADS=3",
                                                          "OPENBLAS_NUM_THREADS=3"]


# A space and shell metacharacters: command substitution both ways, quotes, a command list and a
# comment. Every configurable path lies below a directory of this name, and the strings are this.
HOSTILE = "my data $(touch PWNED) `touch PWNED` 'single' \"double\" ; x || touch PWNED #"


def _pwned(*dirs):
    return [p for d in dirs for p in Path(d).rglob("PWNED")]


def test_config_paths_and_strings_never_run_as_shell(tmp_path, shapes_dir):
    """Every value from the config or a path reaches its command as one argument: the jobs work
    with such paths, and nothing in them executes."""
    import hashlib
    import shlex
    import zipfile

    sys.path.insert(0, str(ROOT / "tests"))
    from synthetic import photo_folder

    from capmodel.datasets import format as fmt

    top = tmp_path / HOSTILE
    work = tmp_path / "w"
    # A data set of yours (source: path): a real baseline and its evaluation read it.
    data = top / "data"
    shutil.copytree(shapes_dir, data)
    path_cfg = _config_with(tmp_path, f"data: {{source: path, path: {json.dumps(str(data))}}}\n")
    r = snakemake(work, "--cores", "2", "results/baseline/metrics.json", config=path_cfg)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((work / "results" / "baseline" / "samples_val.json").read_text())["data_dir"] == str(data)
    # The other commands that read it (training, sampling, the summary report), as the shell splits them.
    r = snakemake(work, "-n", "-p", "--forceall", config=path_cfg)
    assert r.returncode == 0, r.stderr[-3000:]
    commands = [shlex.split(line.removeprefix("Shell command: ")) for line in r.stdout.splitlines()
                if line.startswith("Shell command: capmodel ") or line.startswith("Shell command: papermill ")]
    readers = {c[0] if c[0] == "papermill" else c[1] for c in commands if str(data) in c}
    assert readers == {"train", "sample", "baseline", "papermill"}, r.stdout[-3000:]  # papermill: the summary
    assert all(t == str(data) for c in commands for t in c if "PWNED" in t)  # whole, never split

    # Source images: pictures folder and captions file below the same directory; extraction and merge run.
    caps = photo_folder(top / "photos", copies=2)
    (top / "captions.csv").write_text("image,caption\n" + "".join(f"{n},{c}\n" for n, cs in caps.items() for c in cs))
    images_cfg = _config_with(tmp_path, "data: {source: images, images: %s, captions: %s, shards: 2}\n"
                              % (json.dumps(str(top / "photos")), json.dumps(str(top / "captions.csv"))))
    r = snakemake(work, "--cores", "2", "resources/data/images", config=images_cfg)
    assert r.returncode == 0, r.stderr[-3000:]
    assert fmt.problems(work / "resources" / "data" / "images", pictures=True) == []
    # A weights file: it reaches the extraction job whole, which refuses it for randconv in one line.
    (top / "w.pt").write_bytes(b"")
    weights_cfg = _config_with(tmp_path, "data: {source: images, images: %s, captions: %s, weights: %s}\n"
                               % tuple(json.dumps(str(p)) for p in (top / "photos", top / "captions.csv", top / "w.pt")))
    r = snakemake(tmp_path / "w2", "--cores", "1", "resources/data/images", config=weights_cfg)
    log = (tmp_path / "w2" / "logs" / "data" / "features-1-of-1.log").read_text()
    assert r.returncode != 0 and "--weights: encoder randconv has fixed random filters" in log, log

    # The COCO fetcher: a file:// URL below that directory works; a checksum string arrives whole.
    archive = top / "coco_captioning.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for name in fmt.required_files():
            z.write(shapes_dir / name, f"coco_captioning/{name}")
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    url = archive.as_uri()
    coco_cfg = _config_with(tmp_path, f"data: {{source: coco, coco: {{url: {json.dumps(url)}, sha256: {sha}}}}}\n")
    r = snakemake(tmp_path / "w3", "--cores", "1", "resources/data/coco", config=coco_cfg)
    assert r.returncode == 0, r.stderr[-3000:]
    bad_cfg = _config_with(tmp_path, f"data: {{source: coco, coco: {{url: {json.dumps(url)}, "
                                     f"sha256: {json.dumps(HOSTILE)}}}}}\n")
    r = snakemake(tmp_path / "w4", "--cores", "1", "resources/data/coco", config=bad_cfg)
    log = (tmp_path / "w4" / "logs" / "data" / "coco.log").read_text()
    assert r.returncode != 0 and f"expected sha256 {HOSTILE}" in log, log

    assert _pwned(tmp_path, ROOT) == []
