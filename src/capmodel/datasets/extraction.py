"""Feature extraction streamed into an HDF5 file, resumable, and split into shards.

A features file holds the encoder's features of a list of pictures, in that order: the
dataset `features`, float32 (N, F), of the rows [start, stop) of the list. It is filled one
batch at a time in a work file beside it (PARTIAL_SUFFIX) whose attribute `done` counts the
rows written and flushed, so memory does not grow with the number of pictures and a run
that was killed goes on after the last finished batch. The file gets its name only when
complete. Its attributes say what it holds (`job`: the SHA-256 of the pictures' names,
sizes and modification times and of the encoder's record, `start`, `stop`, `total`), so a
file of other work, or of pictures changed since, is never used, and that capmodel made it
(`kind` = KIND), so capmodel replaces only such files.

With a grid (grid=G), the file also holds the dataset `regions`, float16 (N, G * G, C): the
encoder's regions (capmodel.encoders.base), rounded to float16 as the data set's grid files
store them, written with the features of the same batch; its attribute `grid` = G is part of
what the file holds.

Shards split the list into N contiguous ranges on batch boundaries: every batch holds the
same pictures as in one unsharded run, so the N files together hold the same numbers.
`capmodel data features --shard I/N` makes one; `capmodel data from-folder --features`
uses them (capmodel.datasets.folder).

Dimension letters: N pictures, F feature dimension, L = G * G regions, C channels.
"""

import hashlib
import json
import os
import sys
from pathlib import Path

import h5py
import numpy as np

from capmodel.datasets import format as fmt
from capmodel.image_utils import open_rgb
from capmodel.progress import track
from capmodel.safety.atomic import check_writable, install, remove_file

KIND = "capmodel-features"
PARTIAL_SUFFIX = ".partial"
REGIONS_KEY = "regions"
BLOCK_ROWS = 4096  # rows read at a time when a data set is built from features files


class ExtractionError(ValueError):
    """A features file cannot be written or does not fit the data set being made."""


def job_id(names, paths, encoder_record):
    """The identity of an extraction: SHA-256 of the pictures' names (in order), each file's
    size and modification time (a picture replaced under the same name is other work), and
    the encoder record."""
    files = [(name, st.st_size, st.st_mtime_ns) for name, st in zip(names, map(os.stat, paths))]
    text = json.dumps({"pictures": files, "encoder": encoder_record}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def parse_shard(text):
    """'I/N' (1 <= I <= N) -> (I, N)."""
    try:
        i, n = (int(x) for x in str(text).split("/"))
    except ValueError:
        raise ExtractionError(f"--shard must look like I/N (e.g. 1/4), got '{text}'")
    if not 1 <= i <= n:
        raise ExtractionError(f"--shard {text}: I must be between 1 and N")
    return i, n


def shard_range(total, shard, shards, batch_size):
    """Rows [start, stop) of shard (1-based) of shards over total rows, cut on batch boundaries."""
    batches = -(-total // batch_size)
    start = (shard - 1) * batches // shards * batch_size
    stop = min(shard * batches // shards * batch_size, total)
    return min(start, total), stop


def _read_attrs(path):
    """The attributes of a features file capmodel wrote, or None for any other file."""
    try:
        with h5py.File(path, "r") as f:
            attrs = dict(f.attrs)
    except (OSError, ValueError):
        return None
    return attrs if attrs.get("kind") == KIND else None


def is_ours(path):
    """Whether path is a features file (finished or not) capmodel wrote."""
    return _read_attrs(path) is not None


def check_replaceable(path):
    """Raise ExtractionError unless path is absent or a features file capmodel wrote."""
    path = Path(path)
    for p in (path, path.with_name(path.name + PARTIAL_SUFFIX)):
        if p.is_dir() or (p.exists() and _read_attrs(p) is None):
            raise ExtractionError(f"{p} exists and is not a features file capmodel wrote; capmodel does not "
                                  "replace it: move it away or choose another name")
        check_writable(p, "features file")


def extract_to_file(path, paths, names, encoder, start=0, stop=None, progress=True, check=None, grid=None):
    """Write the encoder's features of paths[start:stop] to the features file at path.

    Inputs:
    - path: The features file (.h5) to make; a complete one of the same job is kept as it
      is, and a work file of the same job left by a killed run is continued
    - paths, names: The N picture files and their names (the names identify the job)
    - encoder: A capmodel.encoders encoder
    - start, stop: The rows to extract (a shard_range), default all
    - progress: Show progress with the ETA on stderr
    - check: Optional function called with the picture files still to extract before any
      is encoded (data sets decode them all first, to name every bad one at once)
    - grid: Also store the encoder's regions on a G x G grid (None: features only)

    Returns the path.
    """
    path = Path(path)
    stop = len(paths) if stop is None else stop
    encoder.check_grid(grid)
    job = job_id(names, paths, encoder.record_fields())
    wanted = {"kind": KIND, "job": job, "start": start, "stop": stop, "total": len(paths)}
    if grid is not None:
        wanted["grid"] = grid
    check_replaceable(path)
    done_attrs = _read_attrs(path) if path.exists() else None
    if done_attrs is not None and all(done_attrs.get(k) == v for k, v in wanted.items()):
        return path  # already complete (a file with a grid also serves a run without one)
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
    attrs = _read_attrs(partial) if partial.exists() else None
    # a work file continues only the same work: one with another grid, or none, starts over
    fresh = attrs is None or any(attrs.get(k) != v for k, v in wanted.items()) or attrs.get("grid") != grid
    done = 0 if fresh else int(attrs["done"])
    if check is not None:
        check(paths[start + done : stop])  # before any file is made: a refused run leaves nothing
    if fresh:
        remove_file(partial, is_ours)  # capmodel's work file of other work (check_replaceable refused any other)
        path.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(partial, "w", track_order=False, libver="earliest") as f:
            f.create_dataset(fmt.FEATURES_KEY, shape=(stop - start, encoder.feature_dim), dtype=np.float32,
                             chunks=(min(encoder.batch_size, stop - start), encoder.feature_dim) if stop > start
                             else None,
                             track_times=False)
            if grid is not None:
                shape = (stop - start, grid * grid, encoder.grid_dim)
                f.create_dataset(REGIONS_KEY, shape=shape, dtype=fmt.GRID_DTYPE, track_times=False,
                                 chunks=(min(encoder.batch_size, stop - start), *shape[1:]) if stop > start else None)
            f.attrs.update({**wanted, "encoder": json.dumps(encoder.record_fields(), sort_keys=True), "done": 0})
    batch = encoder.batch_size
    first = start + done
    batches = range(first, stop, batch)
    if done and progress:
        print(f"resuming {path.name}: {done} of {stop - start} pictures already extracted", file=sys.stderr,
              flush=True)
    with h5py.File(partial, "r+") as f:
        d = f[fmt.FEATURES_KEY]
        shown = track(batches, len(batches), f"{encoder.name} features of {stop - first} pictures",
                      unit="batches") if progress else batches
        for s in shown:
            e = min(s + batch, stop)
            pictures = (open_rgb(p) for p in paths[s:e])  # one batch
            if grid is None:
                d[s - start : e - start] = encoder.encode(pictures)
            else:
                d[s - start : e - start], f[REGIONS_KEY][s - start : e - start] = _checked(
                    *encoder.encode(pictures, grid=grid), names[s:e])
            f.flush()  # the rows are on disk before `done` counts them
            f.attrs["done"] = e - start
            f.flush()
    install(partial, path)
    return path


def _checked(features, regions, names):
    """(features, regions as float16), or ExtractionError naming the first picture whose
    regions float16 cannot hold (NaN, Inf or beyond +-65504)."""
    regions = regions.astype(fmt.GRID_DTYPE)
    finite = np.isfinite(regions).all(axis=(1, 2))
    if not finite.all():
        raise ExtractionError(f"picture {names[int(np.argmin(finite))]}: the encoder's regions hold values that "
                              "float16 cannot store (NaN, Inf or beyond +-65504)")
    return features, regions


class Features:
    """The rows of one or more features files of the same job, read a block at a time.

    The files must together cover rows [0, total) of the job exactly once (shards of one
    extraction); ExtractionError names the file or the rows that do not fit.
    """

    def __init__(self, files, names, paths, encoder_record, grid=None):
        """grid: the files must hold regions on this grid (None: features are all that is read)."""
        job = job_id(names, paths, encoder_record)
        self.total, self.parts, self.grid = len(names), [], grid
        seen = set()
        for p in map(Path, files):
            if p.resolve() in seen:
                raise ExtractionError(f"features file {p} is given twice")
            seen.add(p.resolve())
            if p.is_dir():
                raise ExtractionError(f"features file {p} is a directory; give the .h5 files of the shards")
            if not p.is_file():
                partial = p.with_name(p.name + PARTIAL_SUFFIX)
                why = " (its extraction has not finished: run it again to complete it)" if partial.exists() else ""
                raise ExtractionError(f"features file {p} does not exist{why or ' (make it with capmodel data features)'}")
            attrs = _read_attrs(p)
            if attrs is None:
                raise ExtractionError(f"{p} is not a features file made by capmodel data features")
            rows = int(attrs["stop"]) - int(attrs["start"])
            if int(attrs["done"]) != rows:
                raise ExtractionError(f"features file {p} is unfinished ({attrs['done']} of {rows} rows): run its "
                                      "capmodel data features again to complete it, and pass the finished file")
            if attrs["job"] != job:
                raise ExtractionError(f"features file {p} was made for other pictures (names, sizes or modification "
                                      "times differ, or other captions) or another encoder than this data set's "
                                      "(run capmodel data features with the same images, captions, --encoder, "
                                      "--weights and --image-size)")
            if grid is not None and attrs.get("grid") != grid:
                has = "no grid" if attrs.get("grid") is None else f"a grid of {attrs['grid']}"
                raise ExtractionError(f"features file {p} holds {has}, not the grid of {grid} asked for: run its "
                                      f"capmodel data features again with --grid {grid}")
            self.parts.append((int(attrs["start"]), int(attrs["stop"]), p))
        self.parts.sort()
        at = 0
        for start, stop, p in self.parts:
            if start != at:
                what = (f"rows {at}..{start - 1} of {self.total} are in no file (a shard is missing)" if start > at
                        else f"{p} overlaps another file")
                raise ExtractionError(f"the features files do not fit together: {what}")
            at = stop
        if at != self.total:
            raise ExtractionError(f"the features files do not fit together: rows {at}..{self.total - 1} "
                                  f"of {self.total} are in no file (a shard is missing)")

    def region_block(self):
        """Rows of regions read at a time: at most fmt.BLOCK_VALUES values (a COCO picture's
        7 x 7 regions of 2048 channels are 100,352), at least one row."""
        with h5py.File(self.parts[0][2], "r") as f:
            L, C = f[REGIONS_KEY].shape[1:]
        return max(1, fmt.BLOCK_VALUES // (L * C))

    def rows(self, idx, block=None, key=fmt.FEATURES_KEY):
        """Yield the features (key REGIONS_KEY: the regions) of the rows idx (increasing) in
        order, one array per block of block rows of the whole list (BLOCK_ROWS; for regions,
        region_block()), whatever the files' boundaries: the blocks, and so sums over them (the
        PCA's mean and covariance), are the same for any sharding. Memory: one block, whatever
        the number of rows."""
        if block is None:
            block = self.region_block() if key == REGIONS_KEY else BLOCK_ROWS
        idx = np.asarray(idx, dtype=np.int64)
        for c in range(0, self.total, block):
            e = min(c + block, self.total)
            lo, hi = np.searchsorted(idx, [c, e])
            if hi == lo:
                continue
            pieces = []
            for start, stop, p in self.parts:
                a, b = max(start, c), min(stop, e)
                if a < b:
                    with h5py.File(p, "r") as f:
                        pieces.append(f[key][a - start : b - start])
            yield np.concatenate(pieces)[idx[lo:hi] - c]
