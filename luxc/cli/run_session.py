"""What ``luxc run`` shows and writes as the run goes: the hooks it gives
:func:`luxc.runtime.artifacts._run_loop.train` (loss lines, a progress bar, evaluations, checkpoints, the
``--log`` rows) and its summary."""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from luxc.cli import run_checkpoints as checkpoints
from luxc.cli._common import CliError
from luxc.cli.run_log import RunLog
from luxc.runtime.artifacts._run_loop import RunHooks, RunPlan, train
from luxc.runtime.messages._shown import shown as escaped
from luxc.runtime.trust._guarded_call import GRACE_SECONDS, StepInterrupted

_PLOT_POINTS = 4096  # a loss curve keeps at most this many points: memory stays bounded


@dataclass(frozen=True)
class Flags:
    """The command line, as click parsed it (each field is the flag of the same name)."""

    directory: str
    steps: int | None
    epochs: int | None
    data_path: str | None
    seed: int | None
    eval_path: str | None
    follow_symlinks: bool
    max_data_memory: int
    eval_every: int | None
    state_path: str | None
    save_state: str | None
    checkpoint_dir: str | None
    checkpoint_every: int | None
    keep: int
    resume: bool
    new_run: bool
    log_path: str | None
    steps_per_call: int
    every: int | None
    quiet: bool
    plot: str | None
    time_limit: float | None
    allow_device_kernels: bool
    allow_unchecked_native_calls: bool


def _every(every: int | None, steps: int) -> int:
    # Every step of a short run; about ten lines of a long one.
    return every or (1 if steps <= 20 else math.ceil(steps / 10))


def _plot(points: list[tuple[int, float]], path: str, title: str) -> None:
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    fig = Figure(figsize=(6, 3.5), layout="constrained")
    ax = fig.subplots()
    ax.plot([s for s, _ in points], [v for _, v in points])
    ax.set(xlabel="step", ylabel="loss", title=title,
           yscale="log" if min(v for _, v in points) > 0 else "linear")
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=100)


class _Curve:
    """First and last loss, and a curve of at most _PLOT_POINTS points (every 2**j-th step)."""

    def __init__(self, keep: bool):
        self.keep, self.stride, self.points = keep, 1, []
        self.first = self.last = None

    def add(self, step: int, loss: float) -> None:
        self.first = loss if self.first is None else self.first
        self.last = loss
        if self.keep and step % self.stride == 0:
            self.points.append((step, loss))
            if len(self.points) > _PLOT_POINTS:
                self.stride *= 2
                self.points = [p for p in self.points if p[0] % self.stride == 0]


class Interrupt:
    """The first Ctrl-C (or SIGTERM: ``kill``, a job scheduler's stop) asks the run to stop after
    the current call (then a checkpoint is written); a second one stops at once. Installed when
    the command starts: a Ctrl-C while the artifact loads or compiles is not lost in a callback
    (jax's gc hook swallowed it, and the run then trained to its end) but stops the run before
    its first step."""

    def __init__(self):
        self.requested, self.signal = False, None
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        click.get_current_context().call_on_close(self.__exit__)

    def __enter__(self):
        return self

    def _handle(self, signum, frame):
        self.requested, self.signal = True, self.signal or signum
        signal.signal(signum, self._old[signum])

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)

    @property
    def what(self) -> str:
        """How the run was stopped, for its last line."""
        return "terminated (SIGTERM)" if self.signal == signal.SIGTERM else "interrupted"

    @property
    def exit_code(self) -> int:
        """128 + the signal's number, as a shell reports a process that signal stopped."""
        return 128 + (self.signal or signal.SIGINT)


class Session:
    """What ``luxc run`` shows and writes as the run goes: the hooks of
    :func:`luxc.runtime.artifacts._run_loop.train` (loss lines, evaluations, checkpoints, the log)."""

    def __init__(self, f: Flags, loaded: Any, plan: RunPlan, record: dict[str, Any],
                 log: RunLog | None, interrupt: Interrupt, eval_data: list[Any] | None):
        self.f, self.loaded, self.plan, self.record, self.log = f, loaded, plan, record, log
        self.interrupt, self.eval_data = interrupt, eval_data
        self.every = _every(f.every, plan.end - plan.origin)
        self.curve = _Curve(keep=bool(f.plot))
        self.scales = [loaded.loss_scale]
        self.stat_names = list(loaded.layout.stat_names or (
            f"stats[{i}]" for i in range(loaded.layout.n_stats)))
        self.echo, self.advance = click.echo, _nothing
        self.deadline = None if f.time_limit is None else time.monotonic() + f.time_limit
        self.stuck: StepInterrupted | None = None  # a stranger's call still running after Ctrl-C

    def train(self, dataset: Any) -> None:
        if not self.loaded.signed_by_this_user:  # said once Ctrl-C is luxc's to handle
            click.echo("note: training with an artifact you did not sign; Ctrl-C stops it",
                       err=True)
        hooks = RunHooks(on_step=self.line, stop=self.stopping,
                         evaluate=None if self.eval_data is None else self.evaluate,
                         checkpoint=self.checkpoint if self.f.checkpoint_dir else None,
                         segment=self.segment)
        try:
            train(self.loaded, self.plan, hooks, data=self.loaded.data,
                  batches=None if dataset is None else dataset.batch, deadline=self.deadline)
        except StepInterrupted as e:  # the state is the last finished step's, saved
            self.stuck, self.interrupt.requested = e, True

    def stopping(self) -> bool:
        return self.interrupt.requested or self.log is not None and self.log.error is not None

    def line(self, step: int, loss: float, stats: list[float]) -> None:
        self.curve.add(step, loss)
        visible = (step - self.plan.origin) % self.every == 0 or step == self.plan.end
        if self.log is not None and visible:
            self.log.write({"step": step, "loss": loss, **dict(zip(self.stat_names, stats))})
        if not self.f.quiet and visible:
            self.echo(f"step {step}  loss {loss:.6g}")
        scales, scale = self.scales, self.loaded.loss_scale
        if scales[0] is not None and not self.f.quiet and scale != scales[-1]:
            scales.append(scale)  # float16 training: its loss scale changed
            self.echo(f"step {step}  loss scale {scales[-2]:g} -> {scales[-1]:g}")
        self.advance()

    def evaluate(self, step: int) -> None:
        loss, stats = self.loaded.evaluate(self.eval_data, stop=lambda: self.interrupt.requested,
                                           time_limit=self._time_left())
        if self.log is not None:
            self.log.write({"step": step, "loss": loss, **dict(zip(self.stat_names, stats)),
                            "eval": True})
        if not self.f.quiet:
            click.echo(f"eval step {step}  loss {loss:.6g}" + "".join(
                f"  {escaped(name, 200)} {value:.6g}" for name, value in zip(self.stat_names,
                                                                              stats)))

    def _time_left(self) -> float | None:
        return None if self.deadline is None else max(1e-3, self.deadline - time.monotonic())

    def save(self, path: str | Path) -> None:
        if self.log is not None:  # the rows up to this state on disk first, their record in it
            self.record["log"] = self.log.sync()
        self.loaded.save_state(path, self.record)

    def checkpoint(self, step: int) -> None:
        checkpoints.save(self.f.checkpoint_dir, step, self.f.keep, self.record["run_id"],
                         self.save)

    @contextlib.contextmanager
    def segment(self, n: int) -> Iterator[None]:
        """A progress bar over the segment's ``n`` steps when stderr is a terminal."""
        if self.f.quiet or not sys.stderr.isatty():
            yield
            return
        from rich.console import Console
        from rich.progress import Progress

        with Progress(console=Console(stderr=True), transient=True) as progress:
            task = progress.add_task("training", total=n)
            # On one terminal the lines go above the bar; redirected, stdout gets them plain.
            if sys.stdout.isatty():
                self.echo = lambda text: progress.console.print(text, highlight=False,
                                                                markup=False)
            self.advance = lambda: progress.advance(task)
            try:
                yield
            finally:
                self.echo, self.advance = click.echo, _nothing

    def summary(self, first_step: int, seconds: float, load_seconds: float) -> None:
        f, loaded, curve = self.f, self.loaded, self.curve
        ran = loaded.step_count - first_step + 1
        click.echo(f"ran {ran} steps ({first_step}-{loaded.step_count}) in {seconds:.3f} s, "
                   f"{ran / seconds:.1f} steps/s" + ("" if curve.first is None else
                                                    f"; loss {curve.first:.6g} -> "
                                                    f"{curve.last:.6g}"))
        click.echo(f"executable: {loaded.executable_source} (loaded in {load_seconds:.2f} s)")
        if f.plot and curve.points:
            _plot(curve.points, f.plot, f"luxc run {f.directory}")
            click.echo(f"wrote the loss curve to {f.plot}")
        if f.save_state:
            self.save(f.save_state)
            click.echo(f"saved the state at step {loaded.step_count} to {f.save_state}")
        self._exit_if_stopped()

    def _exit_if_stopped(self) -> None:
        where = self.f.checkpoint_dir or self.f.save_state
        if self.log is not None and self.log.error is not None:
            raise CliError(self.log.failure() + f"; training stopped at step "
                           f"{self.loaded.step_count}" + (f", the state is in {where}" if where
                                                           else ""))
        if self.interrupt.requested:
            click.echo(f"{self.interrupt.what} at step {self.loaded.step_count}" +
                       (f" ({GRACE_SECONDS:.0f} s after Ctrl-C, luxc stopped waiting for the "
                        "artifact's computation)" if self.stuck else "") +
                       (f"; the state is in {where}" if where else ""), err=True)
            sys.exit(self.interrupt.exit_code)


def _nothing() -> None:
    pass
