"""The rendered HTML reports of a .test workflow run: what a reader finds in them.

The HTML is parsed with BeautifulSoup (a dependency of nbconvert) and, in the browser
tests, rendered by headless Chromium (`chromium --dump-dom`, after clicking table headers
where a test sorts), which CI installs from Debian's packages (apt-get install -y chromium).
"""

import csv
import datetime
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from bs4 import BeautifulSoup

import capmodel
from capmodel.app import report_html
from capmodel.app.samples import REF_SEP

ROOT = Path(__file__).resolve().parents[1]
TEST_CONFIG = ROOT / ".test" / "config" / "config.yaml"
NOTEBOOKS = ["model_report", "summary_report"]
MODELS = ["tiny_lstm", "tiny_lstm+scst", "tiny_rnn", "tiny_transformer"]
NUM_EXAMPLES = 4  # report.num_examples of the .test config
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(workflow_run):
    """The .test workflow run's directory (shared with tests/test_workflow.py)."""
    return workflow_run


def read_rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def soup(path):
    return BeautifulSoup(Path(path).read_text(encoding="utf-8"), "html.parser")


def cells(tr):
    return tr.find_all(["td", "th"], recursive=False)


def image_id(td):
    return int(re.search(r"image (\d+)", td.get_text(" ")).group(1))


def captions_by_model(run):
    """{name: {image_idx: generated}} and {image_idx: [references]} from the samples CSVs."""
    kinds = {m: run / "results" / "models" / m for m in MODELS} | {"baseline": run / "results" / "baseline"}
    generated = {k: {int(r["image_idx"]): r["generated"] for r in read_rows(d / "samples_val.csv")}
                 for k, d in kinds.items()}
    refs = {int(r["image_idx"]): r["references"].split(REF_SEP)
            for r in read_rows(kinds[MODELS[0]] / "samples_val.csv")}
    cider = {k: {int(r["image_idx"]): float(r["CIDEr"]) for r in read_rows(d / "scores_val.csv")}
             for k, d in kinds.items()}
    return generated, refs, cider


def notebook_code(name):
    """The code cells of a report notebook in workflow/notebooks/, joined."""
    nb = json.loads((ROOT / "workflow" / "notebooks" / f"{name}.ipynb").read_text())
    return "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_notebooks_leave_html_css_and_javascript_to_report_html(notebook):
    code = notebook_code(notebook)
    for pasted in ("<script", "<style", "IPython.display"):
        assert pasted not in code, pasted
    assert "show_head()" in code


def test_every_report_html_function_is_used():
    code = "\n".join(notebook_code(n) for n in NOTEBOOKS)
    module = inspect.getsource(report_html)
    for name, f in vars(report_html).items():
        if inspect.isfunction(f) and f.__module__ == report_html.__name__:
            # called by a notebook, or by report_html itself (more than its def line)
            assert re.search(rf"\b{name}\(", code) or len(re.findall(rf"\b{name}\(", module)) > 1, name


@pytest.mark.parametrize("name", ["summary", *MODELS])
def test_reports_carry_the_stylesheet_and_sorting_script_once(run, name):
    text = (run / "reports" / f"{name}.html").read_text(encoding="utf-8")
    assert text.count(report_html.CSS) == 1
    assert text.count(report_html.SORT_SCRIPT) == 1


def test_summary_table_one_row_per_model_sorted_baseline_last(run):
    page = soup(run / "reports" / "summary.html")
    table = page.select_one("table.models")
    header = [th.get_text(strip=True) for th in table.thead.find_all("th")]
    assert header[0] == "model"  # no pandas index column before it
    rows = table.tbody.find_all("tr")
    names = [cells(tr)[0].get_text(strip=True) for tr in rows]
    expected = {r["model"]: r for r in read_rows(run / "results" / "summary.csv")}
    by_cider = sorted(MODELS, key=lambda m: -float(expected[m]["CIDEr"]))
    assert names == [*by_cider, "baseline (most frequent caption)"]
    assert rows[-1]["class"] == ["baseline"]
    col = header.index("CIDEr")
    assert [cells(tr)[col].get_text(strip=True) for tr in rows[:-1]] == [expected[m]["CIDEr"] for m in by_cider]
    assert [tr.a["href"] for tr in rows[:-1]] == [f"{m}.html" for m in by_cider]


def test_summary_links_to_every_model_report(run):
    page = soup(run / "reports" / "summary.html")
    hrefs = {a["href"] for a in page.find_all("a", href=True)}
    for m in MODELS:
        assert f"{m}.html" in hrefs
        assert (run / "reports" / f"{m}.html").is_file()  # the relative link resolves


def test_summary_captions_side_by_side_for_the_same_images(run):
    generated, refs, cider = captions_by_model(run)
    mean = {i: np.mean([cider[m][i] for m in MODELS]) for i in refs}
    ranked = sorted(refs, key=lambda i: -mean[i])  # stable: ties keep image order
    summary = {r["model"]: float(r["CIDEr"]) for r in read_rows(run / "results" / "summary.csv")}
    order = sorted(MODELS, key=lambda m: -summary[m])  # the models table's order
    page = soup(run / "reports" / "summary.html")
    shown = {}
    for section in ("best", "worst", "random"):
        assert page.find("h3", id=section) is not None, section
        table = page.select_one(f"table.captions.{section}")
        header = [th.get_text(strip=True) for th in table.thead.find_all("th")]
        assert header == ["image", *order, "baseline (most frequent caption)", "references"], header
        names = [h.split(" ")[0] for h in header[1:-1]]
        ids = []
        for tr in table.tbody.find_all("tr"):
            tds = cells(tr)
            i = image_id(tds[0])
            ids.append(i)
            assert len(tds[0].find_all("img")) == 1 and tds[0].img["src"].startswith("data:image/png;base64,")
            for name, td in zip(names, tds[1:-1]):
                assert td.select_one(".gen").get_text() == generated[name][i], (section, name, i)
                assert f"CIDEr-D {cider[name][i]:.3f}" in td.get_text(" ")
            assert [li.get_text() for li in tds[-1].find_all("li")] == refs[i]
        shown[section] = ids
    assert shown["best"] == ranked[:NUM_EXAMPLES]
    assert shown["worst"] == ranked[::-1][:NUM_EXAMPLES]
    assert len(set(shown["random"])) == NUM_EXAMPLES and shown["random"] == sorted(shown["random"])
    assert "random images (seed 0)" in page.find("h3", id="random").get_text()


def test_summary_run_record(run):
    page = soup(run / "reports" / "summary.html")
    text = page.get_text(" ")
    import snakemake

    for name, version in (("capmodel", capmodel.__version__), ("numpy", np.__version__),
                          ("snakemake", snakemake.__version__)):
        assert re.search(rf"{name}\s+{re.escape(version)}", text), name
    today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    assert f"report made {today}" in re.sub(r"\s+", " ", text)
    assert re.search(r"git commit\s+([0-9a-f]{40}|unknown)", text)
    assert "resources/data/shapes" in text
    splits = {cells(tr)[0].get_text(): [c.get_text() for c in cells(tr)[1:]]
              for tr in page.find("th", string="captions").find_parent("table").tbody.find_all("tr")}
    assert splits == {"train": ["80", "400"], "val": ["16", "80"]}  # .test: 80/16 images, 5 captions each
    settings = page.find("h3", string=re.compile("Training settings")).find_next("table")
    rows = {cells(tr)[0].get_text(): [c.get_text() for c in cells(tr)[1:]] for tr in settings.tbody.find_all("tr")}
    header = [th.get_text() for th in settings.thead.find_all("th")][1:]
    for m in MODELS:
        info = json.loads((run / "results" / "models" / m / "model.json").read_text())
        k = header.index(m)
        assert rows["hidden_dim"][k] == "32" and rows["cell_type"][k] == info["settings"]["cell_type"]
        training = page.find("h3", string="Training time and size").find_next("table")
        row = next(tr for tr in training.tbody.find_all("tr") if cells(tr)[0].get_text() == m)
        assert cells(row)[2].get_text() == f"{info['num_params']:,}"
    decoding = page.find("h3", string=re.compile("Decoding record")).find_next("table")
    assert "beam_size" in decoding.get_text() and "most frequent caption" in decoding.get_text()


@pytest.mark.parametrize("model", MODELS)
def test_model_report(run, model):
    page = soup(run / "reports" / f"{model}.html")
    assert page.find("a", href="summary.html") is not None
    samples = read_rows(run / "results" / "models" / model / "samples_val.csv")
    scores = {int(r["image_idx"]): r for r in read_rows(run / "results" / "models" / model / "scores_val.csv")}
    tables = page.select("table.examples")
    assert len(tables) == 3  # the first images, the best and the worst by CIDEr-D
    first = tables[0].tbody.find_all("tr")
    assert len(first) == NUM_EXAMPLES
    for tr, s in zip(first, samples):
        tds = cells(tr)
        assert image_id(tds[0]) == int(s["image_idx"])
        assert tds[1].get_text() == s["generated"]  # every row: the generated caption ...
        assert [li.get_text() for li in tds[2].find_all("li")] == s["references"].split(REF_SEP)  # ... all refs
        assert tds[3].get_text() == f"{float(scores[int(s['image_idx'])]['CIDEr']):.3f}"
    ranked = sorted(scores, key=lambda i: -float(scores[i]["CIDEr"]))
    assert [image_id(cells(tr)[0]) for tr in tables[1].tbody.find_all("tr")] == ranked[:NUM_EXAMPLES]
    assert [image_id(cells(tr)[0]) for tr in tables[2].tbody.find_all("tr")] == ranked[::-1][:NUM_EXAMPLES]
    ordered = page.select_one("table.scores")
    rows = [[c.get_text() for c in cells(tr)] for tr in ordered.tbody.find_all("tr")]
    assert [int(r[1]) for r in rows] == ranked  # every image, best CIDEr-D first
    assert all(r[2] == f"{float(scores[int(r[1])]['CIDEr']):.3f}" for r in rows)
    settings = page.find("h3", string="Training settings").find_next("table")
    assert "<td>hidden_dim</td><td>32</td>" in str(settings)  # a two-column table, not a dict
    rewards = page.find("h3", string="Mean reward per epoch")
    assert (rewards is not None) == model.endswith("+scst")  # the reward curve and table of SCST only
    if rewards is not None:
        history = read_rows(run / "results" / "models" / model / "history.csv")
        epochs = sorted({r["epoch"] for r in history}, key=int)
        want = [[e, f"{np.mean([float(r['reward']) for r in history if r['epoch'] == e]):.4f}"] for e in epochs]
        got = [[c.get_text() for c in cells(tr)][:2] for tr in rewards.find_next("table").tbody.find_all("tr")]
        assert got == want
    info = json.loads((run / "results" / "models" / model / "model.json").read_text())
    maps = page.select_one("table.attention")  # attention maps: of the first examples, a map per word
    if info["settings"].get("attention", "none") == "none":
        assert maps is None and "This model has no attention" in page.get_text()
    else:
        rows = maps.tbody.find_all("tr", recursive=False)
        assert len(rows) == min(NUM_EXAMPLES, 6)
        for tr, s in zip(rows, samples):
            assert [f.figcaption.contents[0] for f in tr.select("div.attmaps > figure")] == s["generated"].split()


def dump_dom(path, clicks=(), workdir=None):
    """The DOM of the page at path once headless Chromium has run its scripts.

    clicks: (table selector, header text) pairs; a copy of the page in workdir clicks those
    headers, in order, after the page's own scripts ran (as a reader would).
    """
    chromium = shutil.which("chromium")
    if not chromium and not os.environ.get("CAPMODEL_TEST_BROWSER"):
        pytest.skip("headless Chromium is not installed (apt-get install -y chromium); CI installs it and "
                    "sets CAPMODEL_TEST_BROWSER=1, where this test must run")
    assert chromium, ("CAPMODEL_TEST_BROWSER is set but chromium is not installed: "
                      "apt-get install -y chromium (Debian's package)")
    if clicks:
        click = ("<script>var done = 0; " + json.dumps(list(clicks)) + ".forEach(function (c) {"
                 " Array.from(document.querySelectorAll(c[0] + ' > thead th')).find(function (th) {"
                 " return th.textContent.trim() === c[1]; }).click(); done += 1; });"
                 " document.body.dataset.clicked = done;</script>")
        page = Path(path).read_text(encoding="utf-8")
        assert page.count("</body>") == 1
        path = Path(workdir) / f"clicked-{Path(path).name}"
        path.write_text(page.replace("</body>", click + "</body>"), encoding="utf-8")
    r = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", path.as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    dom = BeautifulSoup(r.stdout, "html.parser")
    if clicks:
        assert dom.body["data-clicked"] == str(len(clicks))  # every header was found and clicked
    return dom


def column(table, col):
    return [cells(tr)[col].get_text(strip=True) for tr in table.tbody.find_all("tr")]


def sort_key(text):
    """The order of the sorting script: numbers numerically, then text alphabetically."""
    try:
        return (0, float(text), "")
    except ValueError:
        return (1, 0.0, text.lower())


def test_sorting_the_summary_table_in_a_browser(run, tmp_path):
    page = run / "reports" / "summary.html"
    table = dump_dom(page).select_one("table.models")
    header = [th.get_text(strip=True) for th in table.thead.find_all("th")]
    names, cider = column(table, 0), column(table, header.index("CIDEr"))
    assert names[-1].startswith("baseline")  # as rendered: by CIDEr-D, the baseline last
    dom = dump_dom(page, [("table.models", "model")], tmp_path)
    assert column(dom.select_one("table.models"), 0) == sorted(names, key=str.lower)  # the baseline first
    for clicks, descending in ((1, False), (2, True)):
        dom = dump_dom(page, [("table.models", "CIDEr")] * clicks, tmp_path)
        expected = [n for n, _ in sorted(zip(names, cider), key=lambda x: sort_key(x[1]), reverse=descending)]
        assert column(dom.select_one("table.models"), 0) == expected, clicks


def test_sorting_the_per_image_scores_in_a_browser(run, tmp_path):
    page = run / "reports" / "tiny_rnn.html"
    ids = [int(i) for i in column(dump_dom(page).select_one("table.scores"), 1)]
    assert len(ids) > 10  # so that sorting as text (0, 1, 10, 11, ..., 2) would differ
    dom = dump_dom(page, [("table.scores", "image")], tmp_path)
    assert [int(i) for i in column(dom.select_one("table.scores"), 1)] == sorted(ids)
    dom = dump_dom(page, [("table.scores", "image")] * 2, tmp_path)
    assert [int(i) for i in column(dom.select_one("table.scores"), 1)] == sorted(ids, reverse=True)


def test_reports_render_in_a_browser(run):
    generated, _, _ = captions_by_model(run)
    dom = dump_dom(run / "reports" / "summary.html")
    best = dom.select_one("table.captions.best")
    header = [th.get_text(strip=True) for th in best.thead.find_all("th")]
    n = len(MODELS)
    assert sorted(header[1 : n + 1]) == MODELS and header[n + 1].startswith("baseline")
    tds = cells(best.tbody.find("tr"))
    i = image_id(tds[0])
    assert [td.select_one(".gen").get_text() for td in tds[1 : n + 2]] == [
        generated[m][i] for m in (*header[1 : n + 1], "baseline")]
    hrefs = {a["href"] for a in dom.find_all("a", href=True)}
    assert {f"{m}.html" for m in MODELS} <= hrefs
    dom = dump_dom(run / "reports" / "tiny_rnn.html")
    assert dom.find("a", href="summary.html") is not None
    row = cells(dom.select_one("table.examples").tbody.find("tr"))
    assert row[1].get_text() == generated["tiny_rnn"][image_id(row[0])]


def pictures(path):
    """The src of every picture in the caption tables of a report (examples or captions)."""
    page = soup(path)
    return [img["src"] for table in page.select("table.examples, table.captions") for img in table.find_all("img")]


def test_a_moved_run_directory_still_renders_its_pictures(run, tmp_path):
    """The run directory copied elsewhere, the original out of the way: the reports made
    again there by the workflow's own rules show the same pictures, embedded."""
    moved = tmp_path / "moved"
    shutil.copytree(run, moved, ignore=shutil.ignore_patterns(".snakemake"))
    for samples in moved.glob("results/**/samples_val.*"):  # image paths relative to the data set, not this run
        assert str(run) not in samples.read_text(encoding="utf-8"), samples
    reports = ["reports/tiny_lstm.html", "reports/summary.html"]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "workflow" / "Snakefile"), "--directory", str(moved),
           "--configfile", str(TEST_CONFIG), "--cores", "2", "--forcerun", *reports, "--allowed-rules",
           "report_model", "report_summary", "source_revision", "--", *reports]
    away = run.with_name(run.name + "-away")
    run.rename(away)
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    finally:
        away.rename(run)
    assert r.returncode == 0, r.stderr[-3000:]
    for report in reports:
        assert (moved / report).stat().st_mtime > (run / report).stat().st_mtime  # made again
        shown = pictures(moved / report)
        assert len(shown) >= 3 * NUM_EXAMPLES and all(src.startswith("data:image/png;base64,") for src in shown)
        assert "image unavailable" not in (moved / report).read_text(encoding="utf-8")
        assert shown == pictures(run / report)  # the same pictures as where the run was made
