"""capmodel.models.image_inputs and its callers: a model that attends to image regions gets
the regions of the right images wherever it is fed from a data dict (training objectives,
validation, the validation metric, sampling) and through every decoder."""

import numpy as np
import pytest

from capmodel import decoding
from capmodel.app import samples
from capmodel.app import settings as S
from capmodel.captioning_solver import CaptioningSolver
from capmodel.models import image_inputs
from capmodel.scst import SelfCritical
from capmodel.validation import Validator
from synthetic import random_data

L, C = 4, 3
VAL_OFFSET = 1000  # the val split's images are told apart from the train split's by this


def regions_data():
    """random_data with regions; an image's features (column 0) and regions (every value)
    hold its number (+ VAL_OFFSET for val), so a model can check that they belong together."""
    data = random_data(num_images=20, num_val_images=40)
    for split, offset in (("train", 0), ("val", VAL_OFFSET)):
        n = len(data[f"{split}_features"])
        data[f"{split}_features"][:, 0] = np.arange(n) + offset
        data[f"{split}_regions"] = np.broadcast_to((np.arange(n) + offset)[:, None, None], (n, L, C)).astype(np.float16)
    return data


class RegionsModel:
    """The smallest model that uses regions: the scores of every step are
    features @ W + mean of the regions @ U. Every call records the images it saw and
    raises unless the features and regions of each row are of the same image."""

    uses_regions = True

    def __init__(self, word_to_idx, D):
        rng = np.random.default_rng(0)
        self.word_to_idx = word_to_idx
        self.dtype = np.dtype(np.float64)
        V = len(word_to_idx)
        self.params = {"W": rng.normal(size=(D, V)) * 0.01, "U": rng.normal(size=(C, V)) * 0.01}
        self.seen = []  # (what, images of the rows)

    def check_features(self, features):
        return np.asarray(features, dtype=self.dtype)

    def _images(self, what, features, regions):
        if regions is None:
            raise ValueError(f"{what}: no regions")
        assert regions.shape == (len(features), L, C)
        images = np.asarray(features)[:, 0]
        assert np.array_equal(images, regions[:, 0, 0].astype(np.float64)), f"{what}: rows of other images"
        self.seen.append((what, images.astype(int)))
        return regions.astype(self.dtype).mean(axis=1)  # (N, C)

    def _scores(self, features, pooled):
        features = np.asarray(features, dtype=self.dtype)
        return features @ self.params["W"] + pooled @ self.params["U"]  # (N, V)

    def loss(self, features, captions, regions=None, weights=None, training=True):
        pooled = self._images("loss", features, regions)
        scores = self._scores(features, pooled)
        p = np.exp(scores - scores.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        N = len(features)
        w = np.ones(N) if weights is None else np.asarray(weights)
        targets = captions[:, 1:]
        mask = targets != self.word_to_idx["<NULL>"]  # (N, T)
        loss = -np.sum(w[:, None] * mask * np.log(p[np.arange(N)[:, None], targets])) / N
        dscores = w[:, None] * (mask.sum(axis=1)[:, None] * p)
        np.add.at(dscores, (np.arange(N)[:, None].repeat(targets.shape[1], 1)[mask], targets[mask]),
                  -w[:, None].repeat(targets.shape[1], 1)[mask])
        dscores /= N
        return loss, {"W": np.asarray(features, self.dtype).T @ dscores, "U": pooled.T @ dscores}

    def decoder(self, features, regions=None):
        self._images("decoder", features, regions)
        state = (self.check_features(features), regions)  # regions travel in the state, row by row

        def step(state, words):
            pooled = self._images("step", state[0], state[1])
            return state, self._scores(state[0], pooled)

        return state, step

    def sample(self, features, max_length=30, method="greedy", regions=None, **options):
        return decoding.decode(self, features, max_length=max_length, method=method, regions=regions, **options)

    def images_seen(self, what):
        return set(np.concatenate([i for w, i in self.seen if w == what] or [np.zeros(0, int)]).tolist())


class _FixedRewards:
    def score_ids(self, captions, image_idxs):
        return np.array([len(set(c[c > 3])) for c in captions], dtype=np.float64)


def test_image_inputs_hold_the_regions_of_the_images_only_for_a_model_that_uses_them():
    data = regions_data()
    idxs = np.array([3, 0, 3])
    inputs = image_inputs(RegionsModel(data["word_to_idx"], 16), data, "val", idxs)
    assert sorted(inputs) == ["features", "regions"] and inputs["regions"].shape == (3, L, C)
    assert np.array_equal(inputs["regions"][:, 0, 0], idxs + VAL_OFFSET)

    class Plain:
        pass

    plain = image_inputs(Plain(), data, "val", idxs)
    assert sorted(plain) == ["features"] and np.array_equal(plain["features"], data["val_features"][idxs])


def test_a_data_set_without_regions_is_named():
    data = regions_data()
    del data["train_regions"]
    with pytest.raises(ValueError, match=r"no train regions \(train2014_grid.h5\)"):
        image_inputs(RegionsModel(data["word_to_idx"], 16), data, "train", np.arange(2))


def test_cross_entropy_training_and_validation_feed_the_regions():
    data = regions_data()
    model = RegionsModel(data["word_to_idx"], 16)
    before = {k: v.copy() for k, v in model.params.items()}
    solver = CaptioningSolver(model, data, update_rule="sgd", optim_config={"learning_rate": 1e-6}, batch_size=8,
                              num_epochs=1, seed=0, verbose=False, val_metric="bleu4", val_metric_images=10)
    solver.train()
    assert not np.array_equal(before["U"], model.params["U"])  # the regions' parameters learned
    assert model.images_seen("loss") & set(range(20))  # training: train images
    assert set(range(VAL_OFFSET, VAL_OFFSET + 40)) <= model.images_seen("loss")  # validation loss: val images
    assert set(range(VAL_OFFSET, VAL_OFFSET + 10)) == model.images_seen("decoder")  # the metric's greedy captions
    assert solver.val_history and "bleu4" in solver.val_history[0]


def test_self_critical_training_feeds_the_regions_to_sampling_baseline_and_loss():
    data = regions_data()
    model = RegionsModel(data["word_to_idx"], 16)
    objective = SelfCritical(_FixedRewards(), samples=2, baseline="greedy", max_length=6)
    CaptioningSolver(model, data, update_rule="sgd", optim_config={"learning_rate": 1e-6}, batch_size=4,
                     num_epochs=1, seed=0, verbose=False, objective=objective).train()
    assert {w for w, _ in model.seen} == {"loss", "decoder", "step"}
    assert model.images_seen("loss") <= set(range(20)) and model.images_seen("decoder") <= set(range(20))
    assert len(model.images_seen("decoder")) > 4  # several minibatches of sampled and greedy captions


def test_validator_alone_feeds_the_regions():
    data = regions_data()
    model = RegionsModel(data["word_to_idx"], 16)
    record = Validator(data, metric="cider", val_size=7, metric_images=5)(model)
    assert set(record) == {"val_loss", "cider"}
    assert model.images_seen("decoder") == set(range(VAL_OFFSET, VAL_OFFSET + 5))


@pytest.mark.parametrize("method, options", [("greedy", {}), ("beam", {"beam_size": 3}),
                                             ("temperature", {"temperature": 1.0, "seed": 0})])
def test_samples_are_decoded_with_the_regions_of_their_images(method, options):
    """The samples file's captions, by every decoder (40 images: greedy and beam run in
    blocks of images when BLAS has threads to spare; beam search repeats and reorders the
    state's regions)."""
    data = regions_data()
    model = RegionsModel(data["word_to_idx"], 16)
    ids = np.arange(40)
    record = S.decode_record({"method": method, "max_length": 5, **options})
    caps = samples.caption_images(model, data, "val", ids, record, batch_size=100)
    assert caps.shape == (40, 5)
    assert model.images_seen("step") == set(range(VAL_OFFSET, VAL_OFFSET + 40))


@pytest.mark.parametrize("method, options", [("greedy", {}), ("beam", {"beam_size": 3}),
                                             ("temperature", {"temperature": 1.0, "rng": 0})])
def test_every_decoder_keeps_the_regions_with_their_images(method, options):
    """40 images: greedy and beam run in blocks of images when BLAS has threads to spare;
    beam search repeats and reorders the state's regions."""
    data = regions_data()
    model = RegionsModel(data["word_to_idx"], 16)
    caps = model.sample(data["val_features"], max_length=5, method=method, regions=data["val_regions"], **options)
    assert caps.shape == (40, 5)
    assert model.images_seen("step") == set(range(VAL_OFFSET, VAL_OFFSET + 40))


def test_decoding_refuses_regions_of_other_images():
    data = regions_data()
    model = RegionsModel(data["word_to_idx"], 16)
    with pytest.raises(ValueError, match=r"regions must have one row per image: 3 images"):
        decoding.decode(model, data["val_features"][:3], regions=data["val_regions"][:2])
