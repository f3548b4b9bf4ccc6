"""capmodel.safety.outputs: the rules every command's outputs are checked by before any work."""

import json

import pytest

from capmodel.safety.outputs import check_not_inside, check_output, check_outputs, kind_of


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


def test_text_files_say_what_they_are_by_their_first_line_and_pages_by_their_generator(tmp_path):
    (tmp_path / "c.csv").write_text("\ufeffimage,caption\na.png,a cat\n")
    (tmp_path / "g.html").write_text('<!DOCTYPE html>\n<html><head><meta name="generator" content="capmodel caption">')
    (tmp_path / "mine.html").write_text("<html><body>my page</body></html>")
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00")
    assert kind_of(tmp_path / "c.csv") == "image,caption" and kind_of(tmp_path / "g.html") == "capmodel caption"
    assert kind_of(tmp_path / "mine.html") is None and kind_of(tmp_path / "bin.csv") is None
    check_output(tmp_path / "c.csv", ".csv", kind="image,caption")
    with pytest.raises(ValueError, match="is not a file capmodel wrote there"):
        check_output(tmp_path / "c.csv", ".csv", kind="model,cell_type")
    with pytest.raises(ValueError, match="is not a page capmodel caption wrote"):
        check_output(tmp_path / "mine.html", ".html", kind="capmodel caption")


def test_outputs_are_checked_together_and_never_twice_the_same_file(tmp_path):
    assert check_outputs([(tmp_path / "a.csv", ".csv", None), (None, ".html", None)]) == [tmp_path / "a.csv"]
    with pytest.raises(ValueError, match="is given twice"):
        check_outputs([(tmp_path / "a.csv", ".csv", None), (tmp_path / "." / "a.csv", ".csv", None)])


def test_inputs_inside_a_directory_to_replace_are_refused(tmp_path):
    (tmp_path / "out" / "images").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "out" / "images")
    check_not_inside(tmp_path / "out", [tmp_path / "photos", tmp_path / "outer.csv"], "output data set")
    for inside in (tmp_path / "out", tmp_path / "out" / "images", tmp_path / "link"):
        with pytest.raises(ValueError, match="is inside the output data set"):
            check_not_inside(tmp_path / "out", [inside], "output data set")

