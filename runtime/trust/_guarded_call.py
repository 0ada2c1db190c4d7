"""Running a step someone else wrote so that Ctrl-C and a time limit stop it.

A compiled step runs in XLA's native code; while the calling thread waits for it, Python's
signal handlers do not run, so Ctrl-C on a step that never ends (an endless ``while_loop`` in a
stranger's module) does nothing. :func:`guarded` makes the call and waits for its result in a
worker thread while the calling thread waits on an event, in short slices: SIGINT raises
``KeyboardInterrupt`` there at once, and a deadline raises :class:`TimeLimitExceeded`. XLA cannot
cancel a running computation, so the worker is left to it (a daemon thread: it never holds the
process open); nothing the caller owns was changed, since the step's results are only taken
once it returns.

A process that left such a computation running must not end through Python's shutdown: XLA's
client waits for the computation forever, or the thread is unwound inside XLA's C++ and the
process aborts (``terminate called ... FATAL: exception not rethrown``, SIGABRT). So a command
ends through :func:`exit_now_if_abandoned`, which leaves at once (``os._exit``) with its exit
code after flushing the standard streams; its caller must have closed its own files first.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from luxc.runtime.files._errors import ArtifactError

T = TypeVar("T")
_SLICE_SECONDS = 0.1
# After a stop is asked (``luxc run``'s first Ctrl-C: stop after this call), how long the call
# may still take before luxc gives up on it.
GRACE_SECONDS = 5.0


# Worker threads whose computation was left running (see the module docstring).
_abandoned: list[threading.Thread] = []


def exit_now_if_abandoned(code: int | str | None) -> None:
    """When a guarded computation is still running, end the process now with ``code`` (as
    ``sys.exit`` reads it), after flushing stdout and stderr; else return."""
    if any(t.is_alive() for t in _abandoned):
        exit_now(code)


def exit_now(code: int | str | None) -> None:
    """End the process now with ``code`` (as ``sys.exit`` reads it), after flushing stdout and
    stderr, without Python's shutdown."""
    if isinstance(code, str):
        print(code, file=sys.stderr)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed, or a reader gone: nothing more to say
            pass
    os._exit(code if isinstance(code, int) else 0 if code is None else 1)


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

    worker = threading.Thread(target=work, name="luxc-guarded-step", daemon=True)
    try:
        # start() waits for the thread to run, and a Ctrl-C can end that wait: the computation
        # has begun all the same, so it is abandoned like one interrupted later.
        worker.start()
        _wait(done, deadline, what, stop)
    except BaseException:  # the caller stops waiting: the computation is left running
        _abandoned.append(worker)
        raise
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _wait(done: threading.Event, deadline: float | None, what: str,
          stop: Callable[[], bool] | None) -> None:
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
