"""Running a step someone else wrote so that Ctrl-C and a time limit stop it.

A compiled step runs in XLA's native code; while the calling thread waits for it, Python's
signal handlers do not run, so Ctrl-C on a step that never ends (an endless ``while_loop`` in a
stranger's module) does nothing. :func:`guarded` makes the call and waits for its result in a
worker thread while the calling thread waits on an event, in short slices: SIGINT raises
``KeyboardInterrupt`` there at once, and a deadline raises :class:`TimeLimitExceeded`. XLA cannot
cancel a running computation, so the worker is left to it (a daemon thread: it never holds the
process open); nothing the caller owns was changed, since the step's results are only taken
once it returns.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from luxc.runtime.errors import ArtifactError

T = TypeVar("T")
_SLICE_SECONDS = 0.1
# After a stop is asked (``luxc run``'s first Ctrl-C: stop after this call), how long the call
# may still take before luxc gives up on it.
GRACE_SECONDS = 5.0


class TimeLimitExceeded(ArtifactError):
    """A guarded step did not finish before its deadline."""


class StepInterrupted(ArtifactError):
    """A guarded step had not finished :data:`GRACE_SECONDS` after a stop was asked."""


def deadline_after(seconds: float | None) -> float | None:
    """The ``time.monotonic()`` deadline ``seconds`` from now (``None``: no limit)."""
    if seconds is None:
        return None
    if not seconds > 0:
        raise ValueError(f"time_limit must be a positive number of seconds; received {seconds!r}")
    return time.monotonic() + seconds


def guarded(call: Callable[[], T], deadline: float | None, what: str,
            stop: Callable[[], bool] | None = None) -> T:
    """``call()`` (which must wait for its own result, e.g. ``float`` of a loss) run in a
    worker thread; raises :class:`TimeLimitExceeded` naming ``what`` past ``deadline``, and
    :class:`StepInterrupted` when ``stop()`` turned true and the call has not finished
    :data:`GRACE_SECONDS` later; lets ``KeyboardInterrupt`` through while it runs."""
    done = threading.Event()
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["value"] = call()
        except BaseException as e:  # noqa: BLE001 - handed to the waiting thread as it is
            outcome["error"] = e
        finally:
            done.set()

    threading.Thread(target=work, name="luxc-guarded-step", daemon=True).start()
    asked = None
    while not done.wait(_SLICE_SECONDS if deadline is None
                        else max(0.0, min(_SLICE_SECONDS, deadline - time.monotonic()))):
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            raise TimeLimitExceeded(f"{what} did not finish within the time limit; luxc stopped "
                                    "waiting for it (the state is the one before it)")
        if asked is None and stop is not None and stop():
            asked = now
        if asked is not None and now - asked >= GRACE_SECONDS:
            raise StepInterrupted(f"{what} had not finished {GRACE_SECONDS:.0f} s after Ctrl-C; "
                                  "luxc stopped waiting for it (the state is the one before it)")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
