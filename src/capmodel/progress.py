"""Progress of long steps: a tqdm bar (rate and ETA) in a terminal, and in a log (stderr
not a terminal) a plain line about every tenth of the work with the elapsed time and ETA.
"""

import sys
import time


def clock(seconds):
    """h:mm:ss or m:ss."""
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def track(iterable, total, desc, unit="it", stream=None):
    """Yield the items of iterable while showing progress on stream (default stderr)."""
    stream = stream or sys.stderr
    if stream.isatty():
        from tqdm import tqdm

        yield from tqdm(iterable, total=total, desc=desc, unit=unit, file=stream, dynamic_ncols=True)
        return
    start, every, done = time.perf_counter(), max(total // 10, 1), 0
    for item in iterable:
        yield item
        done += 1
        if done % every == 0 or done == total:
            elapsed = time.perf_counter() - start
            eta = elapsed / done * (total - done)
            print(f"{desc}: {done}/{total} {unit} [elapsed {clock(elapsed)}, ETA {clock(eta)}]", file=stream,
                  flush=True)
