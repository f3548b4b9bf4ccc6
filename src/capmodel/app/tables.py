"""Small CSV helpers shared by the pipeline stages (atomic writes, no pandas needed)."""

import csv
import io

from capmodel.safety.atomic import write_text


def write_csv(path, rows, fieldnames):
    """Atomically write a list of dicts as CSV with the given columns."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fieldnames, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    write_text(path, buf.getvalue())


def read_csv(path):
    """Read a CSV (UTF-8, with or without a byte-order mark) into a list of dicts (strings)."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        return list(csv.DictReader(f))
