"""How the benchmarks time two functions side by side on a shared machine.

- 0.2 s of idle time before every timed call (BLAS/OpenMP worker threads spin for about
  0.1 s after a call and would slow whatever runs next), repeated (up to quiet_wait
  seconds) until other processes used under 15% of the CPU during it, so timed calls
  start in quiet moments;
- the order alternates between rounds (a first, then b first), after warm-up calls;
- the share of the CPU that other processes used during the timed calls, from
  /proc/stat minus this process's own /proc/self/stat time (Linux).
"""

import time

import numpy as np

BUSY_WARNING = 0.15


def cpu_jiffies():
    """(system-wide busy jiffies, total jiffies, this process's utime + stime jiffies)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest is in user)
    with open("/proc/self/stat") as f:
        stat = f.read().rsplit(")", 1)[1].split()
    own = int(stat[11]) + int(stat[12])  # utime, stime (fields 14 and 15)
    return total - idle, total, own


class OtherLoad:
    """Accumulates the other processes' share of the CPU over the timed sections."""

    def __init__(self):
        self.other = self.total = 0

    def __enter__(self):
        self.start = cpu_jiffies()
        return self

    def __exit__(self, *exc):
        busy0, total0, own0 = self.start
        busy1, total1, own1 = cpu_jiffies()
        self.other += max((busy1 - busy0) - (own1 - own0), 0)
        self.total += total1 - total0

    @property
    def share(self):
        return self.other / self.total if self.total else 0.0


class PairTimer:
    """Alternating, gapped timing of pairs of functions; ``load`` is the other processes'
    CPU share over every timed call so far."""

    def __init__(self, rounds, warmup, gap, quiet_wait):
        self.rounds, self.warmup, self.gap, self.quiet_wait = rounds, warmup, gap, quiet_wait
        self.load = OtherLoad()

    def idle_gap(self):
        """Sleep gap seconds; repeat (up to quiet_wait s) while other processes used the CPU."""
        waited = 0.0
        while True:
            gap = OtherLoad()
            with gap:
                time.sleep(self.gap)
            waited += self.gap
            if gap.share < BUSY_WARNING or waited >= self.quiet_wait:
                return

    def time_pair(self, fa, fb):
        """Two lists of seconds: rounds timed calls of fa and of fb, alternating who goes first."""
        for _ in range(self.warmup):
            fa(), fb()
        ta, tb = [], []
        for r in range(self.rounds):
            order = ((fa, ta), (fb, tb)) if r % 2 == 0 else ((fb, tb), (fa, ta))
            for f, times in order:
                self.idle_gap()
                with self.load:
                    s = time.perf_counter()
                    f()
                    times.append(time.perf_counter() - s)
        return ta, tb

    def method(self):
        """The method line of a results file."""
        return (f"{self.rounds} timed rounds after {self.warmup} warm-up calls, {self.gap} s idle before each timed "
                f"call (repeated, up to {self.quiet_wait:g} s, until other processes used under "
                f"{100 * BUSY_WARNING:.0f}% of the CPU in it), order alternating between rounds; median (min-max) in ms")


def ms(times):
    """median (min-max) of seconds, in ms."""
    return f"{1000 * np.median(times):.1f} ({1000 * min(times):.0f}-{1000 * max(times):.0f})"
