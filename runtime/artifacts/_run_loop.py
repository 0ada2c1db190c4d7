"""One training run of a loaded step, written once: what ``LoadedStep.run`` and ``luxc run`` do.

A :class:`RunPlan` says what to run (up to which step, how many steps a compiled call, where the
run saves and evaluates); :func:`train` runs it on a :class:`Steppable` (a
:class:`~luxc.runtime.LoadedStep`), calling :class:`RunHooks` as it goes::

    while step < plan.end and not stop():
        a segment: up to the next multiple of checkpoint_every or eval_every (or plan.end)
            each call: K = min(steps_per_call, steps left in the segment) steps, one compiled
                call on batches(step - plan.origin + i) (or the run's fixed data)
            on_step(step, loss, stats) for every step of the call, then step.check_can_train()
        evaluate(step)   at multiples of eval_every and at plan.end
        checkpoint(step) at multiples of checkpoint_every, at plan.end, and when stopped

Segments end on multiples of the cadences counted from step 0, so a resumed run saves and
evaluates at the steps an uninterrupted one does. A stop (``stop()`` true, asked between calls)
ends the run with the state of a whole number of steps, saved by ``checkpoint`` when given, also
when the call was abandoned (:class:`~luxc.runtime.StepInterrupted` is raised again
once the state is saved). Nothing here prints: the caller's hooks say what happened.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Protocol

from luxc.runtime.trust._guarded_call import StepInterrupted

OnStep = Callable[[int, float, list[float]], None]
Batches = Callable[[int], Sequence[Any]]


class Steppable(Protocol):
    """What :func:`train` runs: a step counter and one compiled call of ``k`` steps."""

    step_count: int

    def call_steps(self, k: int, data: Sequence[Any], batches: Batches | None,
                   deadline: float | None, stop: Callable[[], bool] | None
                   ) -> list[tuple[float, list[float]]]:
        """Run ``k`` steps in one call (on ``batches(i)`` for its ``i``-th step, else on
        ``data``), keep the new state, and return each step's ``(loss, stats)``; the step
        counter is :func:`train`'s to advance."""
        ...

    def check_can_train(self) -> None:
        """Raise if the state cannot train any further (a float16 loss scale of 0)."""
        ...


@dataclass(frozen=True)
class RunPlan:
    """What a run does: train up to step ``end``; the run's first batch is step ``origin + 1``'s
    (``batches(step - 1 - origin)``); ``steps_per_call`` steps a compiled call; segments end on
    multiples of ``checkpoint_every`` and ``eval_every`` (``None``: no such boundary)."""

    end: int
    origin: int = 0
    steps_per_call: int = 1
    checkpoint_every: int | None = None
    eval_every: int | None = None

    def __post_init__(self) -> None:
        if self.steps_per_call < 1:
            raise ValueError(f"steps_per_call must be at least 1; received {self.steps_per_call}")
        for name in ("checkpoint_every", "eval_every"):
            every = getattr(self, name)
            if every is not None and every < 1:
                raise ValueError(f"{name} must be at least 1 (or None); received {every}")

    @classmethod
    def spread(cls, origin: int, total: int, *, steps_per_call: int = 1,
               checkpoint_every: int | None = None, eval_every: int | None = None) -> RunPlan:
        """``total`` steps from ``origin``; a cadence not given is about a tenth of the run
        (``ceil(total / 10)``)."""
        tenth = max(1, math.ceil(total / 10))
        return cls(origin + total, origin, steps_per_call, checkpoint_every or tenth,
                   eval_every or tenth)

    def segment_end(self, step: int) -> int:
        """The step the segment after ``step`` ends at."""
        return min([self.end, *((step // k + 1) * k for k in self._cadences())])

    def segment_lengths(self, step: int) -> tuple[int, ...]:
        """The segments' usual length and that of the last one, from ``step`` (the lengths
        whose K-step programs are worth compiling before the run starts)."""
        remaining = self.end - step
        every = self.checkpoint_every or remaining
        return every, remaining % every or every

    def evaluates_at(self, step: int) -> bool:
        return self.eval_every is not None and (step % self.eval_every == 0 or step == self.end)

    def checkpoints_at(self, step: int) -> bool:
        return self.checkpoint_every is not None and (
            step % self.checkpoint_every == 0 or step == self.end)

    def _cadences(self) -> list[int]:
        return [k for k in (self.checkpoint_every, self.eval_every) if k is not None]


def _never() -> bool:
    return False


@dataclass(frozen=True)
class RunHooks:
    """What the caller sees of a run: ``on_step(step, loss, stats)`` after every step;
    ``stop()`` asked between calls; ``evaluate(step)`` and ``checkpoint(step)`` where the plan
    says (``None``: never); ``segment(n)`` wraps each segment of ``n`` steps (a progress bar)."""

    on_step: OnStep | None = None
    stop: Callable[[], bool] | None = None
    evaluate: Callable[[int], None] | None = None
    checkpoint: Callable[[int], None] | None = None
    segment: Callable[[int], AbstractContextManager[Any]] = nullcontext

    def __post_init__(self) -> None:
        if self.stop is None:
            object.__setattr__(self, "stop", _never)


def train(step: Steppable, plan: RunPlan, hooks: RunHooks, *, data: Sequence[Any],
          batches: Batches | None = None, deadline: float | None = None) -> None:
    """Run ``plan`` on ``step`` (see the module docstring); ``deadline`` (``time.monotonic()``)
    bounds every call (:class:`~luxc.runtime.TimeLimitExceeded` past it)."""
    saved = None  # the step of the newest checkpoint
    while step.step_count < plan.end and not hooks.stop():
        try:
            until = plan.segment_end(step.step_count)
            with hooks.segment(until - step.step_count):
                _segment(step, plan, until, hooks, data, batches, deadline)
            if hooks.evaluate is not None and not hooks.stop() and plan.evaluates_at(
                    step.step_count):
                hooks.evaluate(step.step_count)  # before the checkpoint: a resume logs it
        except StepInterrupted:  # the state is the last finished step's: saved, then said
            if hooks.checkpoint is not None:
                hooks.checkpoint(step.step_count)
            raise
        if hooks.checkpoint is not None and (plan.checkpoints_at(step.step_count)
                                             or hooks.stop()):
            hooks.checkpoint(step.step_count)
            saved = step.step_count
    if hooks.checkpoint is not None and hooks.stop() and saved != step.step_count:
        hooks.checkpoint(step.step_count)  # stopped before its first call: saved all the same


def _segment(step: Steppable, plan: RunPlan, until: int, hooks: RunHooks, data: Sequence[Any],
             batches: Batches | None, deadline: float | None) -> None:
    while step.step_count < until and not hooks.stop():
        k = min(plan.steps_per_call, until - step.step_count)
        first = step.step_count - plan.origin
        call_batches = None if batches is None else (lambda i, first=first: batches(first + i))
        rows = step.call_steps(k, data, call_batches, deadline, hooks.stop)
        for loss, stats in rows:
            step.step_count += 1
            if hooks.on_step is not None:
                hooks.on_step(step.step_count, loss, stats)
        step.check_can_train()
