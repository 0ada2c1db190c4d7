"""The machine's slow stretches: a fixed probe timed around every turn, and the turns to take again.

Some CPUs this suite runs on have stretches of seconds to minutes in which one core runs at about
half its speed, whichever process is running: on the AMD EPYC of 2026-12-06, a pure-Python loop
(:func:`probe`) and 500 dispatches of a tiny ``jax.jit`` slowed together by 1.7× for a few
seconds at a time (``python -m benchmarks.probe_watch 240`` at 08:22 UTC, 14,186 samples over 4
minutes: of the samples where the dispatches were over 1.4× their fastest, 88% had the loop over
1.2× its fastest). The load average and ``/proc/stat`` show nothing then (no other process, no
steal). A turn taken in such a stretch
measures the stretch, not the framework: in the run of 05:20 UTC, luxc's tiny MLP turns took
72-86 µs a step in three rounds of five and 35-38 in two, while ``jax.jit``'s happened to fall
outside them, and the published ratio was 2.15.

So each worker times :func:`probe` before and after its samples, and the driver takes a turn again
(same seed, same process, at most :data:`MAX_RETAKES` times) when the slower probe of the turn was
over :data:`SLOW` times the fastest probe of the run so far. A turn still slow after its retakes is
kept and counted in the report.
"""

from __future__ import annotations

import time

# About 8 ms on the AMD EPYC of 2026-12-06: short beside a turn (0.3 s to tens of seconds).
PROBE_ITERATIONS = 200_000
# The stretches slowed the probe by about 1.7×; outside them its window medians stayed within 1.05×.
SLOW = 1.3
MAX_RETAKES = 2


def probe() -> float:
    """Seconds of a fixed pure-Python loop: this core's speed at this moment."""
    t0 = time.perf_counter()
    total = 0
    for i in range(PROBE_ITERATIONS):
        total += i * i
    return time.perf_counter() - t0


class SlowStretches:
    """The fastest probe of the run so far, against which each turn's probes are judged."""

    def __init__(self) -> None:
        self.fastest: float | None = None

    def slowness(self, probes: list[float]) -> float:
        """The turn's slower probe over the fastest seen (this turn's included)."""
        low = min(probes)
        self.fastest = low if self.fastest is None else min(self.fastest, low)
        return max(probes) / self.fastest


def take_again(slowness: float, retakes: int) -> bool:
    """Whether a turn this slow, already taken again ``retakes`` times, is taken once more."""
    return slowness > SLOW and retakes < MAX_RETAKES
