"""config/coco.yaml, the workflow configuration for a real COCO run, is valid for the schema."""

from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")
jsonschema = pytest.importorskip("jsonschema")

from capmodel.app import workflow_config as wc  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def load(path):
    return yaml.safe_load((ROOT / path).read_text())


def test_coco_config_is_valid_for_the_workflow_schema():
    schema = load("workflow/schemas/config.schema.yaml")
    config = load("config/coco.yaml")
    jsonschema.validators.validator_for(schema)(schema).validate(config)


def test_coco_config_trains_the_benchmarked_model_on_coco():
    config = load("config/coco.yaml")
    assert config["data"]["source"] == "coco"
    models = wc.expand_models(config)
    assert sorted(models) == ["gru_h512", "lstm_h512", "lstm_h512+scst"]
    scst = models["lstm_h512+scst"]  # the literature's SCST recipe: a tenth of cross-entropy's rate
    assert scst["objective"] == "scst" and scst["learning_rate"] <= models["lstm_h512"]["learning_rate"] / 10
    assert (scst["scst_samples"], scst["scst_baseline"], scst["val_metric"]) == (5, "greedy", "cider")
    for settings in models.values():
        # the settings whose speed and memory bench_coco_scale.py measured
        assert (settings["hidden_dim"], settings["wordvec_dim"], settings["batch_size"]) == (512, 256, 100)
    assert config["sample"]["num_images"] is None  # the whole val split


def test_a_broken_coco_config_is_rejected():
    schema = load("workflow/schemas/config.schema.yaml")
    config = load("config/coco.yaml")
    config["train_defaults"]["hiden_dim"] = 512
    with pytest.raises(jsonschema.ValidationError, match="hiden_dim"):
        jsonschema.validators.validator_for(schema)(schema).validate(config)


@pytest.mark.parametrize("recipe, shards, encoder", [("config/flickr8k.yaml", 4, "efficientnet-lite0"),
                                                     ("config/coco-images.yaml", 10, "resnet101")])
def test_raw_image_recipes_are_valid_and_extract_in_shards(recipe, shards, encoder):
    schema = load("workflow/schemas/config.schema.yaml")
    config = load(recipe)
    jsonschema.validators.validator_for(schema)(schema).validate(config)
    data = config["data"]
    assert (data["source"], data["encoder"], data["shards"]) == ("images", encoder, shards)
    assert len(wc.features_shards(data)) == shards
    assert config["sample"]["split"] == "test"  # Karpathy's test split
    assert wc.expand_models(config)  # at least one model, and its fine-tuned sibling
