"""capmodel.progress: timed lines in logs (a terminal gets a tqdm bar)."""

import io
import re

from capmodel.progress import clock, track


def test_lines_with_elapsed_and_eta_about_every_tenth():
    out = io.StringIO()  # not a terminal
    assert list(track(range(20), 20, "decoding", unit="batches", stream=out)) == list(range(20))
    lines = out.getvalue().splitlines()
    assert len(lines) == 10 and lines[-1].startswith("decoding: 20/20 batches [elapsed ")
    assert all(re.fullmatch(r"decoding: \d+/20 batches \[elapsed \d+:\d\d, ETA \d+:\d\d\]", line) for line in lines)


def test_clock():
    assert (clock(5), clock(65), clock(3725)) == ("0:05", "1:05", "1:02:05")
