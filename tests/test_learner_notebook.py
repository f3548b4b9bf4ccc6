"""The learner's notebook (notebooks/RNN_Captioning.ipynb): stored clean, and executed with papermill
on a freshly generated shapes dataset with small parameters."""

import json
import os
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "RNN_Captioning.ipynb"


def test_stored_without_outputs_and_with_one_parameters_cell():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    for name in ("cell_type", "num_train", "hidden_dim", "num_epochs", "data_dir", "results_json"):
        assert f"\n{name} = " in "\n" + tagged[0].source
    assert "skynet" not in NOTEBOOK.read_text() and "cs231n." not in NOTEBOOK.read_text()


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    import papermill

    tmp = tmp_path_factory.mktemp("nb")
    # the kernel imports this checkout's capmodel, whatever is installed
    env = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src")] + ([env] if env else []))
    try:
        papermill.execute_notebook(
            str(NOTEBOOK), str(tmp / "out.ipynb"), kernel_name="python3", cwd=str(tmp), progress_bar=False,
            parameters={"data_dir": str(tmp / "shapes"), "generate_num_train": 40, "generate_num_val": 10,
                        "cell_type": "rnn", "num_train": 20, "hidden_dim": 64, "wordvec_dim": 32,
                        "num_epochs": 50, "batch_size": 10, "learning_rate": 1e-2, "lr_decay": 1.0,
                        "num_eval_images": 10, "use_java": False, "results_json": str(tmp / "results.json")})
    finally:
        if env is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = env
    return tmp, json.loads((tmp / "results.json").read_text()), nbformat.read(tmp / "out.ipynb", as_version=4)


@pytest.mark.slow
def test_notebook_makes_the_missing_dataset(executed):
    tmp, _, _ = executed
    assert (tmp / "shapes" / "coco2014_captions.h5").is_file()
    assert len(list((tmp / "shapes" / "images" / "train").glob("*.png"))) == 40


@pytest.mark.slow
def test_layer_checks_match_cs231n_and_numeric_gradients(executed):
    _, r, _ = executed
    for name in ("rnn_step_forward", "rnn_forward", "word_embedding_forward", "lstm_step_forward", "lstm_forward"):
        assert r[name] < 1e-7, name
    for name in ("rnn_step_backward", "rnn_backward", "word_embedding_backward", "temporal_affine_backward",
                 "temporal_softmax_loss", "lstm_step_backward", "lstm_backward", "rnn_model_grads",
                 "lstm_model_grads"):
        assert 0 < max(r[name].values()) < 1e-5, name
    assert abs(r["rnn_model_loss"] - 9.83235591003) < 1e-10
    assert abs(r["lstm_model_loss"] - 9.82445935443) < 1e-10
    for got, expected in zip(r["softmax_sanity"], (2.3, 23, 2.3)):
        assert abs(got - expected) < 0.05 * expected


@pytest.mark.slow
def test_overfit_and_captions(executed):
    _, r, nb = executed
    assert r["overfit_initial_loss"] > 40 and r["overfit_final_loss"] < 1.0
    assert r["train_recited"] == len(r["train_samples"]) == 4  # the overfit model recites its captions
    assert set(r["metrics"]) == {"greedy", "beam 3", "baseline"}
    assert all(0 <= s["CIDEr"] and 0 <= s["Bleu_4"] <= 1 for s in r["metrics"].values())
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 4  # the data, the loss curve, train and val captions
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "expected loss:  9.83235591003" in text and "loss:  9.83235591002" in text
