"""capmodel.safety.outputs: the rules every command's outputs are checked by before any work."""

import json

import pytest

from capmodel.safety.outputs import check_output


def test_an_output_must_have_its_suffix_and_not_be_an_input(tmp_path):
    with pytest.raises(ValueError, match=r"must end in \.csv"):
        check_output(tmp_path / "model.npz", ".csv")
    given = tmp_path / "in.csv"
    given.write_text("x\n")
    with pytest.raises(ValueError, match="is also an input of this command"):
        check_output(tmp_path / "." / "in.csv", ".csv", inputs=(given,))
    check_output(tmp_path / "new" / "out.csv", ".csv", inputs=(given,))  # a new file in a new directory


def test_an_existing_json_is_replaced_only_when_capmodel_wrote_it_for_that_purpose(tmp_path):
    mine, other = tmp_path / "metrics.json", tmp_path / "model.json"
    mine.write_text(json.dumps({"kind": "metrics", "Bleu_4": 0.1}))
    other.write_text(json.dumps({"model": {"cell_type": "lstm"}}))
    check_output(mine, ".json", kind="metrics")
    with pytest.raises(ValueError, match="is not a metrics capmodel wrote"):
        check_output(other, ".json", kind="metrics")


def test_an_output_that_cannot_be_written_is_refused(tmp_path):
    (tmp_path / "d.csv").mkdir()
    with pytest.raises(ValueError, match="is a directory"):
        check_output(tmp_path / "d.csv", ".csv")
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="is a file, not a directory"):
        check_output(tmp_path / "file" / "out.csv", ".csv")
