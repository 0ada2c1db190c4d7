"""How busy the machine is, as the benchmark driver sees it at the start of each turn.

Two figures, both recorded on every row:

- ``load1``: the 1-minute load average (``os.getloadavg()``). It is what a user checks, but
  it also counts the benchmark's own threads: after a minute of measuring on 2 cores it sits
  near 2 on an idle machine, so past the start of a run it cannot tell idle from busy.
- ``others``: the cores that processes *other than this benchmark* kept busy since the
  previous mark, from ``/proc/stat`` (all CPU time but idle and iowait) minus the CPU time of
  the driver and its worker processes with their descendants (``/proc/<pid>/stat``). On an
  idle machine it stays near 0 whatever the benchmark does.

``others`` is taken over a window of at least ``MIN_WINDOW`` seconds: ``/proc/stat`` moves in
whole clock ticks (10 ms) per core, so over a turn of a few milliseconds (a process whose variants
were all filtered out) one tick read as several cores busy. A mark sooner than that after the
previous one extends the previous mark's window instead of starting its own.

A run is *busy* when ``load1`` at its start, or ``others`` during any turn, exceeds the
threshold (``--max-load``, default 0.7: on 2 cores, the bar an idle machine passes).
Without ``/proc`` (not Linux), ``others`` is ``None`` and ``load1`` at every turn is used.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
MIN_WINDOW = 1.0  # seconds; a tick's quantisation over it is at most ~0.02 cores a core


def _busy_ticks() -> int | None:
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    ticks = [int(f) for f in fields[:8]]  # user nice system idle iowait irq softirq steal
    return sum(ticks) - ticks[3] - ticks[4]


def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        out.setdefault(ppid, []).append(int(entry.name))
    return out


def _tree_ticks(root: int) -> int:
    """CPU ticks of ``root`` and every live descendant, with the reaped children of each."""
    children, total, todo = _children(), 0, [root]
    while todo:
        pid = todo.pop()
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
        todo += children.get(pid, [])
    return total


@dataclass(frozen=True)
class Load:
    """The machine's load at one mark: ``load1`` (1-minute load average) and ``others``
    (cores other processes used since the previous mark; ``None`` without ``/proc``)."""

    load1: float
    others: float | None

    def worst(self) -> float:
        """The figure the busy rule compares: ``others`` where known, else ``load1``."""
        return self.load1 if self.others is None else self.others


class LoadMeter:
    """Marks of :class:`Load`, each covering the time since the previous mark (or, within
    ``MIN_WINDOW`` of it, the previous mark's window extended to now)."""

    def __init__(self) -> None:
        self._last = self._base = (time.monotonic(), _busy_ticks(), _tree_ticks(os.getpid()))

    def mark(self) -> Load:
        now, busy, ours = time.monotonic(), _busy_ticks(), _tree_ticks(os.getpid())
        if now - self._last[0] >= MIN_WINDOW:
            self._base = self._last  # else: keep measuring from the older, longer window
        then, busy0, ours0 = self._base
        self._last = (now, busy, ours)
        if busy is None or busy0 is None or now <= then:
            return Load(os.getloadavg()[0], None)
        others = max(0.0, (busy - busy0 - (ours - ours0)) / _TICK / (now - then))
        return Load(os.getloadavg()[0], round(others, 3))
