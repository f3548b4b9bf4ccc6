"""Regions that carry their place in the grid (num_regions, the region_positions setting):
capmodel.attention.with_positions, and both model families with it."""

import numpy as np
import pytest

from capmodel import decoding, models, optim
from capmodel.attention import with_positions
from capmodel.classifiers.rnn import CaptioningRNN
from capmodel.classifiers.transformer import CaptioningTransformer
from synthetic import WithRegions

VOCAB = {"<NULL>": 0, "<START>": 1, "<END>": 2, "<UNK>": 3, **{f"w{i}": i for i in range(4, 10)}}
L, C = 4, 6


def test_with_positions_appends_each_regions_place_as_one_hot_channels():
    regions = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)
    out = with_positions(regions)
    assert out.shape == (2, 3, 5) and out.dtype == np.float32
    assert np.array_equal(out[:, :, :2], regions)
    assert np.array_equal(out[0, :, 2:], np.eye(3)) and np.array_equal(out[1, :, 2:], np.eye(3))
    with pytest.raises(ValueError, match=r"regions must have shape \(N, L, D\)"):
        with_positions(regions[0])


def make(family, positions, seed=0, dtype=np.float32):
    place = {"attention": "soft", "region_dim": C, "num_regions": L if positions else None, "seed": seed,
             "dtype": dtype}
    if family == "rnn":
        return CaptioningRNN(VOCAB, input_dim=3, wordvec_dim=16, hidden_dim=32, cell_type="lstm", **place)
    return CaptioningTransformer(VOCAB, input_dim=3, wordvec_dim=16, num_heads=2, num_layers=1, hidden_dim=32,
                                 max_length=4, **place)


def where_data(rng, N):
    """One object, the same in every picture, in one of the L regions; the caption names
    the region it is in ("w4" .. "w7"). The global features carry nothing: only the place
    of the attended region tells the word."""
    where = rng.integers(0, L, size=N)
    regions = 0.05 * rng.standard_normal((N, L, C)).astype(np.float32)
    regions[np.arange(N), where] += 1.0
    captions = np.c_[np.ones(N, int), 4 + where, np.full(N, 2)]
    return np.zeros((N, 3), np.float32), captions, regions, where


def accuracy_after_training(family, positions):
    rng = np.random.default_rng(5)
    features, captions, regions, where = where_data(rng, 64)
    model = make(family, positions)
    configs = {k: {"learning_rate": 1e-2} for k in model.params}
    for _ in range(120):
        _, grads = model.loss(features, captions, regions=regions)
        for k in model.params:
            model.params[k], configs[k] = optim.adam(model.params[k], grads[k], configs[k])
    test_features, _, test_regions, test_where = where_data(np.random.default_rng(6), 64)
    said = decoding.greedy(WithRegions(model, test_regions), test_features, 2)
    return np.mean(said[:, 0] == 4 + test_where)


@pytest.mark.parametrize("family", ["rnn", "transformer"])
def test_only_a_model_that_knows_its_grid_can_say_where_the_object_is(family):
    """The regions' contents are the same wherever the object is: without its place, the
    attended context cannot tell left from right (chance: 1/4); with it, the model learns."""
    assert accuracy_after_training(family, positions=True) > 0.95
    assert accuracy_after_training(family, positions=False) < 0.6


@pytest.mark.parametrize("family", ["rnn", "transformer"])
def test_positions_add_one_row_per_place_and_keep_the_other_parameters(family):
    with_places, without = make(family, True), make(family, False)
    name = "att.Wr" if family == "rnn" else "W_proj_regions"
    assert with_places.params[name].shape[0] == without.params[name].shape[0] + L == C + L
    same = [k for k in without.params if with_places.params[k].shape == without.params[k].shape]
    assert set(without.params) == set(with_places.params) and len(same) >= len(without.params) - 4


@pytest.mark.parametrize("family", ["rnn", "transformer"])
def test_a_model_that_knows_its_grid_refuses_another_grid_and_round_trips(family, tmp_path):
    from capmodel import checkpoints

    model = make(family, True, dtype=np.float64)
    features, captions, regions, _ = where_data(np.random.default_rng(1), 5)
    with pytest.raises(ValueError, match=r"learned the places of a grid of 4 regions, got 9 regions"):
        model.loss(features, captions, regions=np.zeros((5, 9, C)))
    with pytest.raises(ValueError, match="learned the places of a grid of 4 regions, got 9"):
        model.sample(features, max_length=3, regions=np.zeros((5, 9, C)))
    desc = model.describe()
    assert desc["num_regions"] == L and models.from_description(desc).describe() == desc
    checkpoints.save_model(tmp_path / "m", model)
    loaded = checkpoints.load_model(tmp_path / "m")[0]
    assert loaded.loss(features, captions, regions=regions)[0] == model.loss(features, captions, regions=regions)[0]
    assert "num_regions" not in make(family, False).describe()  # a set of regions, described as before


@pytest.mark.parametrize("family", ["rnn", "transformer"])
def test_attention_weights_of_a_model_with_places_cover_the_l_regions(family):
    model = make(family, True, dtype=np.float64)
    features, captions, regions, _ = where_data(np.random.default_rng(2), 3)
    alphas = model.attend(features, captions, regions)
    assert alphas.shape == (3, 2, L) and np.allclose(alphas.sum(axis=2), 1)


@pytest.mark.parametrize("cell_type", ["lstm", "transformer"])
def test_the_region_positions_setting_decides_whether_a_model_knows_its_grid(cell_type):
    from capmodel.app import settings as S

    s = S.check_train({"cell_type": cell_type, "attention": "soft", "wordvec_dim": 8, "hidden_dim": 8,
                       "num_heads": 2})
    assert s["region_positions"] is True  # on by default
    assert models.build(VOCAB, 3, s, region_dim=C, num_regions=L).num_regions == L
    assert models.build(VOCAB, 3, {**s, "region_positions": False}, region_dim=C, num_regions=L).num_regions is None
    assert models.build(VOCAB, 3, {**s, "attention": "none"}, region_dim=C, num_regions=L).uses_regions is False


@pytest.mark.parametrize("bad", [0, -2, 2.5, True])
def test_num_regions_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError, match="num_regions must be a positive integer"):
        CaptioningRNN(VOCAB, input_dim=3, attention="soft", region_dim=C, num_regions=bad)
    with pytest.raises(ValueError, match="num_regions=4 is given but attention is none"):
        CaptioningTransformer(VOCAB, input_dim=3, wordvec_dim=8, num_heads=2, num_regions=4)


def test_fine_tuning_a_model_without_places_says_which_setting_matches(tmp_path, capsys):
    from capmodel.app.cli import main
    from capmodel.datasets import shapes

    data = tmp_path / "shapes"
    shapes.generate(data, num_train=20, num_val=4, seed=2, grid=2, grid_pca=8)
    small = ["--hidden-dim", "8", "--wordvec-dim", "8", "--batch-size", "20", "--max-iterations", "1",
             "--attention", "soft"]
    assert main(["train", "--data", str(data), "--out-dir", str(tmp_path / "set"), "--no-region-positions",
                 *small]) == 0
    capsys.readouterr()
    assert main(["train", "--data", str(data), "--out-dir", str(tmp_path / "o"), "--init-from",
                 str(tmp_path / "set"), *small]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "num_regions None (settings: 4) (region_positions false matches the model)" in err
    assert main(["train", "--data", str(data), "--out-dir", str(tmp_path / "o"), "--init-from",
                 str(tmp_path / "set"), "--no-region-positions", *small]) == 0


def test_a_model_that_knows_its_grid_refuses_another_grid_by_name_before_decoding(tmp_path, capsys):
    from capmodel.app.cli import main
    from capmodel.datasets import shapes

    for g in (2, 3):  # without their encoder records, so that --init-from compares the models themselves
        shapes.generate(tmp_path / f"g{g}", num_train=20, num_val=4, seed=2, grid=g, grid_pca=8)
        for record in (tmp_path / f"g{g}").glob("feature_extractor*"):
            record.unlink()
    small = ["--hidden-dim", "8", "--wordvec-dim", "8", "--batch-size", "20", "--max-iterations", "1",
             "--attention", "soft"]
    assert main(["train", "--data", str(tmp_path / "g2"), "--out-dir", str(tmp_path / "m"), *small]) == 0
    capsys.readouterr()
    out = tmp_path / "s.csv"
    assert main(["sample", "--model", str(tmp_path / "m"), "--data", str(tmp_path / "g3"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "9 regions (3 x 3)" in err and "4 regions (2 x 2)" in err
    assert str(tmp_path / "g3") in err and str(tmp_path / "m") in err
    assert not out.exists() and not out.with_suffix(".json").exists()
    assert main(["train", "--data", str(tmp_path / "g3"), "--out-dir", str(tmp_path / "o"), "--init-from",
                 str(tmp_path / "m"), *small]) == 2
    err = capsys.readouterr().err
    assert "num_regions 4 (settings: 9)" in err and "another grid" in err and "matches the model" not in err


def test_a_run_fingerprint_names_region_positions_only_when_the_regions_carry_their_places():
    # a run checkpointed before the setting existed has no region_positions in its
    # run_config.json; the runs that read regions as before (none, or as a set) still match it
    from capmodel.app import settings as S
    from capmodel.app.pipeline import run_fingerprint

    def settings(**values):
        return S.check_train(values)

    data = {"sha256": "0" * 64, "encoder": None}
    for s in (settings(), settings(region_positions=False), settings(attention="soft", region_positions=False)):
        assert "region_positions" not in run_fingerprint(data, s, None)["settings"]
    assert run_fingerprint(data, settings(attention="soft"), None)["settings"]["region_positions"] is True
