"""Small CSV helpers shared by the pipeline stages (atomic writes, no pandas needed)."""

import csv
import io

from capmodel.safety.atomic import write_text


def csv_text(rows, fieldnames):
    """A list of dicts as CSV text with the given columns (a header row first)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fieldnames, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def write_csv(path, rows, fieldnames):
    """Atomically write a list of dicts as CSV with the given columns."""
    write_text(path, csv_text(rows, fieldnames))


def read_csv(path):
    """Read a CSV (UTF-8, with or without a byte-order mark) into a list of dicts (strings)."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        return list(csv.DictReader(f))
