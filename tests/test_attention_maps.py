"""Attention maps people can look at: the drawing (capmodel.app.attention_maps), the weights of
given captions (capmodel.app.attention_weights), the caption gallery's maps (`capmodel caption
--html`) and the report notebooks' attention sections, run with papermill on a small run with
an attention LSTM and its twin without attention."""

import csv
import os
import re
from pathlib import Path

import numpy as np
import pytest
from bs4 import BeautifulSoup
from PIL import Image

from capmodel import checkpoints
from capmodel.app import attention_maps as am
from capmodel.app import captioner, report_html
from capmodel.app.attention_weights import caption_alphas, caption_ids, model_alphas, split_inputs
from capmodel.datasets import format as fmt

ROOT = Path(__file__).resolve().parents[1]
TINY = {"cell_type": "lstm", "num_epochs": 6, "hidden_dim": 32, "wordvec_dim": 16, "batch_size": 50,
        "learning_rate": 1e-2, "seed": 1, "val_size": 60}


# ------------------------------------------------------------------ drawing

def test_upsampling_puts_each_weight_at_its_cell_centre_and_interpolates_between():
    weights = np.array([[0.0, 1.0], [2.0, 3.0]])
    up = am.upsample(weights, 8, 8)
    assert up.shape == (8, 8)
    # cell (r, c) covers pixels 4r..4r+3; its centre lies between pixels 4r+1 and 4r+2
    assert up[0, 0] == 0.0 and up[7, 7] == 3.0 and up[0, 7] == 1.0 and up[7, 0] == 2.0  # borders: no extrapolation
    np.testing.assert_allclose(up[3:5, 3:5].mean(), 1.5)  # the middle: the mean of the four cells
    assert np.all(np.diff(up, axis=1) >= 0) and np.all(np.diff(up, axis=0) >= 0)  # smooth, no steps backwards
    assert up.min() >= 0 and up.max() <= 3


def drawn_value(value, level):
    """What overlay makes of a pixel value at attention level m = w / max(weights)."""
    shaded = value * (am.FLOOR + (1 - am.FLOOR) * level)
    return shaded * (1 - am.GLOW * level) + 255 * am.GLOW * level


def test_a_map_on_one_region_lights_that_region_and_darkens_the_rest():
    picture = np.full((64, 64, 3), 200, np.uint8)
    picture[:, :, 2] = 100
    G = 4
    for region in (0, 6, 15):
        a = np.full(G * G, 0.01)
        a[region] = 1 - 0.01 * (G * G - 1)
        drawn = am.word_maps(picture, a[None])[0]
        assert drawn.shape == (am.MAP_SIDE, am.MAP_SIDE, 3) and drawn.dtype == np.uint8
        cell = am.MAP_SIDE // G
        r, c = divmod(region, G)
        centre = drawn[r * cell + cell // 2, c * cell + cell // 2]
        np.testing.assert_allclose(centre, drawn_value(np.array([200, 200, 100]), 1.0), atol=6)  # lit
        brightness = drawn.astype(float).sum(axis=2)
        cells = brightness.reshape(G, cell, G, cell).mean(axis=(1, 3))  # mean brightness of each region
        assert np.argmax(cells) == region
        far = [(i, j) for i in range(G) for j in range(G) if abs(i - r) > 1 or abs(j - c) > 1]
        for i, j in far:  # regions with a weight near 0, away from the attended one: dark
            np.testing.assert_allclose(drawn[i * cell + cell // 2, j * cell + cell // 2],
                                       drawn_value(np.array([200, 200, 100]), 0.01 / a[region]), atol=2)


def test_a_flat_map_lights_the_whole_picture_alike():
    picture = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    drawn = am.word_maps(picture, np.full((1, 16), 1 / 16))[0]
    enlarged = np.asarray(Image.fromarray(picture).resize((128, 128), Image.NEAREST))  # sharp: whole pixels
    np.testing.assert_array_equal(drawn, np.rint(drawn_value(enlarged.astype(float), 1.0)))


def test_maps_are_drawn_on_the_centred_square_of_a_wide_picture():
    picture = np.zeros((60, 100, 3), np.uint8)
    picture[:, 20:80] = 255  # the centred 60 x 60 square is white, the margins black
    a = np.zeros(4)
    a[1] = 1.0  # top right region of a 2 x 2 grid
    drawn = am.word_maps(picture, a[None], side=60)[0]
    assert drawn.shape == (60, 60, 3)
    assert drawn[:, :, 0].min() >= round(255 * am.FLOOR) - 1  # no black margin inside the map
    assert drawn[0, 59, 0] == 255 and drawn[59, 0, 0] == round(255 * am.FLOOR)  # corners: their cell's weight


def test_maps_html_has_one_figure_per_word_with_the_word_under_it():
    picture = np.full((64, 64, 3), 255, np.uint8)
    alphas = np.random.default_rng(1).dirichlet(np.ones(16), size=3)
    page = BeautifulSoup(am.maps_html(picture, ["a", "red", "<circle>"], alphas), "html.parser")
    figures = page.select("div.attmaps > figure")
    assert [f.figcaption.contents[0] for f in figures] == ["a", "red", "<circle>"]  # escaped, read as text
    assert [f.figcaption.small.get_text() for f in figures] == [f"max {a.max():.2f}" for a in alphas]
    assert all(f.img["src"].startswith("data:image/png;base64,") for f in figures)  # a drawing: exact
    photo = pytest.importorskip("skimage.data").chelsea()  # a photograph: PNG is many times larger
    assert am.image_uri(am.word_maps(photo, alphas[:1])[0]).startswith("data:image/jpeg;base64,")
    with pytest.raises(ValueError, match="2 words but 3 rows"):
        am.maps_html(picture, ["a", "b"], alphas)
    with pytest.raises(ValueError, match="no square grid"):
        am.maps_html(picture, ["a"], np.full((1, 5), 0.2))


# ------------------------------------------------------------------ a run with an attention model

def train(data_dir, out_dir, settings):
    from capmodel.app import pipeline

    pipeline.train(data_dir, out_dir, settings, verbose=False)
    return out_dir


@pytest.fixture(scope="module")
def run(tmp_path_factory, shapes_dir):
    """A small run on the shapes data set: an attention LSTM ("lstm_att") and its twin without
    attention ("lstm"), their val captions and scores, and the summary table."""
    from capmodel.app import pipeline, samples

    work = tmp_path_factory.mktemp("attrun")
    models_dir = work / "results" / "models"
    train(shapes_dir, models_dir / "lstm_att", {**TINY, "attention": "soft"})
    train(shapes_dir, models_dir / "lstm", TINY)
    for m in ("lstm", "lstm_att"):
        d = models_dir / m
        samples.sample(d, shapes_dir, d / "samples_val.csv")
        samples.evaluate(d / "samples_val.csv", d / "metrics.json", use_java=False, name=m,
                         scores_csv=d / "scores_val.csv")
    names = ("lstm", "lstm_att")
    pipeline.summarize([models_dir / m / "metrics.json" for m in names], work / "results" / "summary.csv",
                       work / "results" / "summary.md", model_files=[models_dir / m / "model.json" for m in names],
                       val_files=[models_dir / m / "val.csv" for m in names])
    return work


@pytest.mark.slow  # the run fixture trains two models
def test_caption_weights_are_the_models_own_teacher_forced_weights(run, shapes_dir):
    base = checkpoints.model_base(run / "results" / "models" / "lstm_att")
    model, _ = checkpoints.load_model(base)
    texts = ["a red circle", "", "a big blue square left of a green triangle"]
    captions, lengths = caption_ids(texts, model.word_to_idx)
    assert captions.shape == (3, 10) and lengths.tolist() == [3, 0, 9]
    assert captions[0, :4].tolist() == [model.word_to_idx[w] for w in ("<START>", "a", "red", "circle")]
    features, regions = split_inputs(shapes_dir, "val", [4, 0, 4])
    data = fmt.load(shapes_dir)
    np.testing.assert_array_equal(features, data["val_features"][[4, 0, 4]])
    np.testing.assert_array_equal(regions, data["val_regions"][[4, 0, 4]])
    alphas = caption_alphas(model, features, regions, texts)
    assert [a.shape for a in alphas] == [(3, 16), (0, 16), (9, 16)]
    whole = model.attend(features, captions, regions)
    np.testing.assert_allclose(alphas[2], whole[2], rtol=1e-6)  # word t's weights: those that predicted it
    np.testing.assert_allclose(alphas[0], model.attend(features[:1], captions[:1, :4], regions[:1])[0], rtol=1e-5)
    by_dir = model_alphas(base.parent, shapes_dir, "val", [4, 0, 4], texts)
    assert all(np.array_equal(a, b) for a, b in zip(by_dir, alphas))
    assert model_alphas(run / "results" / "models" / "lstm", shapes_dir, "val", [0], ["a"]) is None


def gallery(tmp_path, model_dir, pictures):
    rows = captioner.caption_files(model_dir, pictures)
    out = tmp_path / f"{Path(model_dir).name}.html"
    captioner.write_outputs(rows, html_path=out)
    return rows, BeautifulSoup(out.read_text(encoding="utf-8"), "html.parser")


@pytest.mark.slow  # the run fixture trains two models
def test_the_gallery_draws_a_map_per_word_for_an_attention_model_only(run, shapes_dir, tmp_path):
    pictures = [shapes_dir / u for u in fmt.read_urls(shapes_dir, "val")[:5]]
    rows, page = gallery(tmp_path, run / "results" / "models" / "lstm_att", pictures)
    figures = page.select("div.grid > figure")
    assert len(figures) == 5 and all("alphas" in r for r in rows)
    for r, fig in zip(rows, figures):
        words = r["caption"].split()
        assert words and r["alphas"].shape == (len(words), 16)
        maps = fig.select("div.attmaps > figure")
        assert [m.figcaption.contents[0] for m in maps] == words  # one map per word, in order
        np.testing.assert_allclose(r["alphas"].sum(axis=1), 1, rtol=1e-4)
    # the map under a word is the picture drawn with that word's weights
    first = figures[0].select("div.attmaps img")[1]["src"]
    drawn = am.word_maps(Image.open(pictures[0]), rows[0]["alphas"][1:2])[0]
    assert first == am.image_uri(drawn)
    rows, page = gallery(tmp_path, run / "results" / "models" / "lstm", pictures)
    assert not page.select("div.attmaps") and not any("alphas" in r for r in rows)
    assert len(page.select("div.grid > figure")) == 5


@pytest.mark.slow  # the run fixture trains two models
def test_the_gallery_draws_maps_of_the_first_map_pictures_only(run, shapes_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(captioner, "MAP_PICTURES", 2)
    pictures = [shapes_dir / u for u in fmt.read_urls(shapes_dir, "val")[:4]]
    rows, page = gallery(tmp_path, run / "results" / "models" / "lstm_att", pictures)
    assert ["alphas" in r for r in rows] == [True, True, False, False]
    assert [bool(f.select("div.attmaps")) for f in page.select("div.grid > figure")] == [True, True, False, False]
    assert "Attention maps of the first 2 pictures" in page.get_text()


def test_attention_pairs_pair_each_attention_model_with_its_twin():
    lstm = {"cell_type": "lstm", "hidden_dim": 32, "attention": "none", "attention_penalty": 1.0}
    settings = {"lstm": lstm, "rnn": {**lstm, "cell_type": "rnn"},
                "lstm_att": {**lstm, "attention": "soft", "attention_penalty": 0.5},
                "gru_att": {**lstm, "cell_type": "gru", "attention": "soft"},
                "old": {"cell_type": "lstm", "hidden_dim": 32}}  # a model.json from before attention
    assert report_html.attention_pairs(settings) == [("lstm_att", "lstm"), ("gru_att", None)]


# ------------------------------------------------------------------ the reports

def read_rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def execute(notebook, out, cwd, parameters):
    import papermill

    env = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src")] + ([env] if env else []))
    try:
        papermill.execute_notebook(str(ROOT / "workflow" / "notebooks" / notebook), str(out), kernel_name="python3",
                                   cwd=str(cwd), progress_bar=False, parameters=parameters)
    finally:
        if env is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = env
    import nbformat

    nb = nbformat.read(out, as_version=4)
    shown = [o.get("data", {}).get("text/html", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    return BeautifulSoup("\n".join(shown), "html.parser")


def model_report(run, model, shapes_dir):
    d = run / "results" / "models" / model
    return execute("model_report.ipynb", run / f"{model}.ipynb", run, {
        "model_name": model, "model_json": str(d / "model.json"), "metrics_json": str(d / "metrics.json"),
        "history_csv": str(d / "history.csv"), "val_csv": str(d / "val.csv"), "samples_csv": str(d / "samples_val.csv"),
        "samples_json": str(d / "samples_val.json"), "scores_csv": str(d / "scores_val.csv"),
        "data_dir": str(shapes_dir), "figures_dir": str(d / "figures"), "num_examples": 3})


@pytest.mark.slow
def test_the_model_report_shows_the_attention_maps_of_an_attention_model(run, shapes_dir):
    page = model_report(run, "lstm_att", shapes_dir)
    table = page.select_one("table.attention")
    rows = table.tbody.find_all("tr", recursive=False)
    samples = read_rows(run / "results" / "models" / "lstm_att" / "samples_val.csv")[:3]
    assert len(rows) == 3
    for tr, sample in zip(rows, samples):
        assert re.search(r"image (\d+)", tr.get_text(" ")).group(1) == sample["image_idx"]
        assert tr.select_one(".gen").get_text() == sample["generated"]
        maps = tr.select("div.attmaps > figure")
        assert [m.figcaption.contents[0] for m in maps] == sample["generated"].split()
    # the first map is the first picture drawn with the weights that predicted its first word
    i, text = int(samples[0]["image_idx"]), samples[0]["generated"]
    alphas = model_alphas(run / "results" / "models" / "lstm_att", shapes_dir, "val", [i], [text])[0]
    picture = report_html.thumbnail((shapes_dir / fmt.read_urls(shapes_dir, "val")[i]).as_uri())
    # (pixels, not bytes: the notebook's kernel may round the weights' last float32 bit otherwise;
    # the expected map goes through the same encoding, PNG or JPEG, as the page's)
    shown = uri_pixels(rows[0].select("div.attmaps img")[0]["src"]).astype(int)
    expected = uri_pixels(am.image_uri(am.word_maps(picture, alphas[:1])[0])).astype(int)
    assert np.abs(shown - expected).max() <= 2


def uri_pixels(uri):
    """The uint8 (H, W, 3) pixels of an image data: URI."""
    import base64
    import io

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB"))


@pytest.mark.slow
def test_the_model_report_of_a_model_without_attention_says_so(run, shapes_dir):
    page = model_report(run, "lstm", shapes_dir)
    assert page.select_one("table.attention") is None and not page.select("div.attmaps")
    assert "This model has no attention" in page.get_text()


@pytest.mark.slow
def test_the_summary_report_sets_an_attention_model_beside_its_twin(run, shapes_dir):
    d = run / "results" / "models"
    names = ("lstm", "lstm_att")
    files = lambda name: {m: str(d / m / name) for m in names}
    page = execute("summary_report.ipynb", run / "summary.ipynb", run, {
        "summary_csv": str(run / "results" / "summary.csv"), "model_json": files("model.json"),
        "val_files": files("val.csv"), "samples_files": files("samples_val.csv"),
        "scores_files": files("scores_val.csv"), "records": files("samples_val.json"),
        "data_dir": str(shapes_dir), "figures_dir": str(run / "figures"), "num_examples": 4})
    generated = {m: {int(r["image_idx"]): r["generated"] for r in read_rows(d / m / "samples_val.csv")} for m in names}
    cider = {m: {int(r["image_idx"]): float(r["CIDEr"]) for r in read_rows(d / m / "scores_val.csv")} for m in names}
    gain = {i: cider["lstm_att"][i] - cider["lstm"][i] for i in cider["lstm"]}
    for kind, sign in (("gains", -1), ("losses", 1)):
        pair = page.select_one(f"table.pair-{kind}-lstm_att")
        header = [th.get_text(strip=True) for th in pair.thead.find_all("th")]
        assert header == ["image", "lstm", "lstm_att", "references"]
        ids = []
        for tr in pair.tbody.find_all("tr", recursive=False):
            tds = tr.find_all("td", recursive=False)
            i = int(re.search(r"image (\d+)", tds[0].get_text(" ")).group(1))
            assert [td.select_one(".gen").get_text() for td in tds[1:3]] == [generated["lstm"][i], generated["lstm_att"][i]]
            ids.append(i)
        assert len(ids) == 4 and [gain[i] for i in ids] == sorted((gain[i] for i in ids), key=lambda g: sign * g)
        assert sign * gain[ids[-1]] <= min(sign * g for i, g in gain.items() if i not in ids)  # the extremes
    better = sum(g > 0 for g in gain.values())
    text = page.find("h3", id="pair-lstm_att").find_next("p").get_text()
    assert f"lstm_att higher on {better}," in text


@pytest.mark.slow
def test_a_map_shows_where_its_region_is_in_a_browser(tmp_path):
    """Headless Chromium draws the embedded maps as drawn: unscaled, the attended region of a
    grey picture lit where it lies (CI sets CAPMODEL_TEST_BROWSER=1 and installs chromium)."""
    import shutil
    import subprocess

    chromium = shutil.which("chromium")
    if not chromium and not os.environ.get("CAPMODEL_TEST_BROWSER"):
        pytest.skip("headless Chromium is not installed (apt-get install -y chromium)")
    assert chromium, "CAPMODEL_TEST_BROWSER is set but chromium is not installed: apt-get install -y chromium"
    picture = np.full((64, 64, 3), 128, np.uint8)
    alphas = np.array([[0.01, 0.01, 0.01, 0.97], [0.97, 0.01, 0.01, 0.01]])  # bottom right, then top left
    page = tmp_path / "maps.html"
    page.write_text(f'<!DOCTYPE html><html><head><style>{am.CSS} body, .attmaps {{margin: 0;}}</style></head><body>'
                    f'{am.maps_html(picture, ["right", "left"], alphas)}</body></html>', encoding="utf-8")
    shot = tmp_path / "shot.png"
    r = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        "--force-device-scale-factor=1", f"--screenshot={shot}", "--window-size=400,220",
                        page.as_uri()], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and shot.is_file(), r.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    side, step = am.MAP_SIDE, am.MAP_SIDE + 2 + 6  # each map: its border of 1 px a side, then the gap
    for k, (lit, dark) in enumerate((((3, 3), (1, 1)), ((1, 1), (3, 3)))):  # quarter centres, in quarters of side
        shown = pixels[1 : side + 1, k * step + 1 : k * step + side + 1]  # inside the border
        np.testing.assert_array_equal(shown, am.word_maps(picture, alphas[k : k + 1])[0])  # as drawn, unscaled
        assert shown[lit[0] * side // 4, lit[1] * side // 4].sum() > 2 * shown[dark[0] * side // 4, dark[1] * side // 4].sum()
