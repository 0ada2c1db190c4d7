"""A training step loaded from an artifact: runnable without the model's source, one step or
K steps per compiled call."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax import export as jax_export

from luxc.passes import PassRecord
from luxc.runtime.artifacts._checkpoint_format import (
    canonical_order,
    checkpoint_bytes,
    state_from_checkpoint,
)
from luxc.runtime.artifacts._format import Artifact
from luxc.runtime.artifacts._forward import Evaluate, Forward
from luxc.runtime.artifacts._manifest import ArraySpec, Layout, Manifest, describe
from luxc.runtime.artifacts._mesh import put
from luxc.runtime.artifacts._run_loop import RunHooks, RunPlan, train
from luxc.runtime.artifacts._tensor_codec import tensors_from_bytes
from luxc.runtime.caching import persistent_cache
from luxc.runtime.compiling._stages import CompiledStages
from luxc.runtime.files._atomic_write import write_atomic
from luxc.runtime.files._errors import ArtifactError
from luxc.runtime.messages._shown import shown
from luxc.runtime.performance._op_profile import OpRecord, profile_exported
from luxc.runtime.trust._guarded_call import deadline_after, guarded
from luxc.runtime.trust._native_calls import NativeCallCheck, check_lowered


class LoadedStep(CompiledStages):
    """An exported training step loaded from disk, runnable without the model's source.

    ``state`` (parameters, optimiser state and model state, flat) and ``data`` come from the
    artifact; ``step(state, data)`` returns ``(new_state, loss, stats)``; ``run(n)`` trains
    ``n`` steps. ``notes`` records how it was loaded (e.g. a fallback compile) and
    ``executable_source`` is ``"serialized executable"`` or ``"compiled from StableHLO"``.
    """

    def __init__(self, artifact: Artifact, exported: jax_export.Exported,
                 compiled: jax.stages.Compiled, executable_source: str, notes: list[str],
                 shardings: Sequence[Any], forward: Forward | None = None,
                 evaluate: Evaluate | None = None, xla_options: dict[str, Any] | None = None,
                 native_check: NativeCallCheck | None = None):
        self.directory, self.manifest = artifact.directory, artifact.manifest
        self.exported, self.compiled, self._call = exported, compiled, compiled
        self.executable_source, self.notes = executable_source, notes
        # A stranger's step may never end: it runs where Ctrl-C stops it (trust/_guarded_call).
        self.signed_by_this_user = artifact.signed_by_this_user
        self._text = artifact.files["step.mlir"].decode("utf-8", errors="replace")
        self.layout: Layout = artifact.manifest.layout
        n_state = self.layout.n_state
        state = artifact_tensors(artifact, "state.safetensors", self.manifest.state_inputs)
        data = artifact_tensors(artifact, "data.safetensors", self.manifest.data_inputs)
        self._shardings = list(shardings)  # None for each input on one device
        self.state = put(state, self._shardings[:n_state])
        self.data = put(data, self._shardings[n_state:])
        self.step_count = self.layout.step
        self._scans: dict[tuple[int, bool], Callable] = {}
        self.forward, self.evaluator = forward, evaluate
        # The XLA options the module was compiled with (a stranger's already filtered).
        self.xla_options = dict(xla_options or {})
        # A stranger's native calls, checked again wherever the step is compiled anew.
        self._native_check = native_check

    def evaluate(self, data: Sequence[Any], *, time_limit: float | None = None,
                 stop: Callable[[], bool] | None = None) -> tuple[float, list[float]]:
        """The objective's loss and stats (in the layout's ``stat_names`` order; a stat that is
        not a scalar: its mean) on all of ``data`` (the step's data arrays, any number of
        samples), in test mode, with the current parameters and no update. ``time_limit`` and
        ``stop`` bound a stranger's evaluation as :meth:`run` bounds its steps."""
        if self.evaluator is None:
            raise ArtifactError(f"{self.directory} holds no evaluation program (its objective "
                                "could not be exported for any batch size, or an older luxc "
                                "compiled it); recompile it")
        return self.evaluator(self.state, [np.asarray(x) for x in data], time_limit=time_limit,
                              stop=stop)

    def predict(self, x: Any) -> np.ndarray | list[np.ndarray]:
        """The model's output for ``x`` (batch-first, any batch size) in test mode, with the
        current parameters and model state: ``model(x, ps, testmode(st))[0]`` (a list when the
        model returns several arrays)."""
        return _predict(self.forward, self.state, x, self.directory)

    @property
    def loss_scale(self) -> float | None:
        """The dynamic loss scale of a float16 mixed-precision step (``None`` without one)."""
        names = self.layout.state_names
        if "loss_scaling.scale" not in names:
            return None
        return float(self.state[names.index("loss_scaling.scale")])

    @property
    def pass_report(self) -> list[PassRecord]:
        return list(self.manifest.pass_report)

    def stages(self) -> tuple[str, ...]:
        return ("optimized", "hlo")

    def _stage_text(self, stage: str) -> str | None:
        if stage == "optimized":
            return self._text
        return self.compiled.as_text() if stage == "hlo" else None

    def _figures_source(self) -> jax.stages.Compiled:
        return self.compiled

    def check_data(self, data: Sequence[Any]) -> list[jax.Array]:
        expected = self.manifest.data_inputs
        if len(data) != len(expected):
            raise ArtifactError(f"the step takes {len(expected)} data arrays; received {len(data)}")
        out = []
        for name, x, spec, sharding in zip(self.layout.data_names, data, expected,
                                           self._shardings[len(self.state):]):
            if np.shape(x) != spec.shape or str(np.asarray(x).dtype) != spec.dtype:
                raise ArtifactError(f"{shown(name, 200)} has shape {list(np.shape(x))} and dtype "
                                    f"{np.asarray(x).dtype}; the step was compiled for shape "
                                    f"{list(spec.shape)} and dtype {spec.dtype}")
            out.extend(put([x], [sharding]))
        return out

    def __call__(self, state: Sequence[Any], data: Sequence[Any]):
        outs = self._call(*state, *data)
        n = len(self.state)
        return list(outs[:n]), outs[n], list(outs[n + 1:])

    def profile(self, steps: int = 20) -> list[OpRecord]:
        """The step's HLO ops by time per step on the artifact's state and data, largest first
        (:class:`~luxc.runtime.performance._op_profile.OpRecord`). The artifact's checked StableHLO is
        compiled again with per-op tracing (never its serialized executable), with the XLA
        options it was loaded with; a step this user did not sign runs where Ctrl-C stops it,
        as in :meth:`run`. ``state`` is not changed."""
        guard = None if self.signed_by_this_user else (
            lambda call: guarded(call, None, "a profiled step"))
        return profile_exported(self.exported, (*self.state, *self.data), self.xla_options,
                                steps, guard, self._native_check)

    def run(self, steps: int, data: Sequence[Any] | None = None,
            on_step: Callable[[int, float], None] | None = None, *,
            steps_per_call: int = 1, batches: Callable[[int], Sequence[Any]] | None = None,
            stop: Callable[[], bool] | None = None, keep_losses: bool = True,
            on_stats: Callable[[int, float, list[float]], None] | None = None,
            time_limit: float | None = None) -> list[float]:
        """Train ``steps`` steps from the current state; returns the losses (none with
        ``keep_losses=False``: a long run's memory stays bounded).

        ``batches(i)`` gives the host data of this call's ``i``-th step (a dataset); else every
        step takes ``data`` (default: the artifact's). ``steps_per_call=K`` runs K steps in one
        compiled call (a ``lax.scan`` of the stored step, compiled from its StableHLO once),
        Keras's ``steps_per_execution``: the host waits for the device once per K steps.
        ``on_step`` still sees every step's loss (``on_stats`` also its stats, in the order
        of the layout's ``stat_names``; a stat that is not a scalar: its mean); ``stop()``,
        asked between calls, ends the run early with the state of a whole number of steps.
        A float16 step whose loss scale reaches 0 raises ``ArtifactError`` (it cannot train).

        ``time_limit`` (seconds, the whole run) raises
        :class:`~luxc.runtime.TimeLimitExceeded` when reached, with the state of
        the last finished call kept. The steps of an artifact this user did not sign, or of any
        run with a time limit, run where Ctrl-C stops them (``KeyboardInterrupt``) even inside
        a call that never returns. The loop is :func:`luxc.runtime.artifacts._run_loop.train`'s, the one
        ``luxc run`` runs, on a plan without checkpoints or evaluations."""
        plan = RunPlan(self.step_count + steps, self.step_count, steps_per_call)
        data = self.data if data is None else self.check_data(data)
        losses: list[float] = []

        def each(step: int, loss: float, stats: list[float]) -> None:
            if keep_losses:
                losses.append(loss)
            if on_step is not None:
                on_step(step, loss)
            if on_stats is not None:
                on_stats(step, loss, stats)

        train(self, plan, RunHooks(on_step=each, stop=stop), data=data, batches=batches,
              deadline=deadline_after(time_limit))
        return losses

    def call_steps(self, k: int, data: Sequence[Any],
                   batches: Callable[[int], Sequence[Any]] | None, deadline: float | None,
                   stop: Callable[[], bool] | None) -> list[tuple[float, list[float]]]:
        """``k`` steps in one compiled call from the current state (on ``batches(i)`` for the
        call's ``i``-th step, else on ``data``); keeps the new state and returns each step's
        ``(loss, stats)`` (:class:`~luxc.runtime.artifacts._run_loop.Steppable`). The host data is read
        first; only the device work runs guarded (a stranger's step, or a time limit)."""
        if batches is None:
            step_data = data
        elif k == 1:
            step_data = self.check_data(batches(0))
        else:
            step_data = [np.stack(xs) for xs in zip(*(batches(i) for i in range(k)))]

        def call(state=self.state) -> tuple[list[Any], list[tuple[float, list[float]]]]:
            if k == 1:
                new, loss, stats = self(state, step_data)
                return new, [(float(loss), [float(np.mean(s)) for s in stats])]
            new, (losses, stats) = self._scanned(k, stacked=batches is not None)(state, step_data)
            columns = [np.asarray(s, dtype=np.float64).reshape(k, -1).mean(1) for s in stats]
            return new, [(float(loss), [float(c[i]) for c in columns])
                         for i, loss in enumerate(np.asarray(losses))]

        if deadline is None and self.signed_by_this_user:
            self.state, rows = call()
        else:
            first = self.step_count + 1
            self.state, rows = guarded(call, deadline, f"step{'s' if k > 1 else ''} "
                                       f"{first}{f'-{first + k - 1}' if k > 1 else ''}", stop)
        return rows

    def check_can_train(self) -> None:
        """Stop a float16 run that can no longer train: its loss scale halves on every step
        whose gradients are not finite, so 0 (or a forged inf/nan) means that every step of
        the last ~150 or more was skipped and every later one would be too."""
        scale = self.loss_scale
        if scale is not None and not 0 < scale < float("inf"):
            raise ArtifactError(f"the float16 loss scale is {scale:g} at step {self.step_count}: "
                                "the gradients were not finite (nan or inf) on every recent "
                                "step, so no step updated the parameters and none would; check "
                                "the data and the learning rate (training stopped)")

    def prepare(self, steps_per_call: int, steps: int, stacked: bool = False) -> None:
        """Compile now the K-step programs ``run(steps, steps_per_call=K)`` will call, so its
        time is the training's alone."""
        for k in {min(steps_per_call, steps), steps % steps_per_call} - {0, 1}:
            self._scanned(k, stacked)

    def _scanned(self, k: int, stacked: bool = False) -> Callable:
        """``k`` steps as one executable, compiled once per ``k`` (data: the stored StableHLO).
        ``stacked``: the data has a leading axis of ``k``, one batch a step."""
        if (k, stacked) not in self._scans:
            n, call = len(self.state), self.exported.call

            def steps(state, data):
                def body(carry, batch):
                    outs = call(*carry, *(data if batch is None else batch))
                    return list(outs[:n]), (outs[n], list(outs[n + 1:]))

                return jax.lax.scan(body, list(state), data if stacked else None, length=k)

            example = [jax.ShapeDtypeStruct((k, *np.shape(x)), x.dtype) for x in self.data] \
                if stacked else self.data
            lowered = jax.jit(steps).lower(self.state, example)
            check_lowered(lowered, self._native_check)
            with persistent_cache.compiling():
                self._scans[k, stacked] = lowered.compile()
        return self._scans[k, stacked]

    def save_state(self, path: str | Path, run: dict[str, Any] | None = None) -> None:
        """Write the current state (and step) atomically as a luxc checkpoint: the file
        ``luxc.load_state(path, like=ts)`` reads, ``ts`` a TrainState of the compiled model.
        ``run`` (seed, origin) lets ``luxc run --resume`` continue the same data order."""
        names = self.layout.state_names
        order = canonical_order(list(names))
        arrays = [np.asarray(jax.device_get(self.state[i])) for i in order]
        write_atomic(path, checkpoint_bytes([names[i] for i in order], arrays, self.step_count,
                                            dict(self.layout.statics or {}), run))

    def load_state(self, path: str | Path) -> dict[str, Any] | None:
        """Continue from the checkpoint at ``path`` (written by ``save_state``, ``luxc run`` or
        ``luxc.save_state``); returns its run record (``None`` if it has none)."""
        arrays, ckpt = state_from_checkpoint(path, self.manifest)
        self.state = put(arrays, self._shardings[:self.layout.n_state])
        self.step_count = ckpt.step
        return ckpt.run


def artifact_tensors(artifact: Artifact, name: str, specs: Sequence[ArraySpec]
                     ) -> list[np.ndarray]:
    """The arrays of the artifact's tensor file ``name``, checked to be ``specs`` (the
    manifest's, in order)."""
    arrays, _ = tensors_from_bytes(artifact.files[name], f"{artifact.directory / name}")
    if len(arrays) != len(specs):
        raise ArtifactError(f"{artifact.directory / name} holds {len(arrays)} arrays; the manifest "
                            f"lists {len(specs)}")
    for i, (a, spec) in enumerate(zip(arrays, specs)):
        if a.shape != spec.shape or str(a.dtype) != spec.dtype:
            raise ArtifactError(f"{artifact.directory / name}: array {i} is {a.dtype}"
                                f"{list(a.shape)}; the manifest says {describe(spec)}")
    return arrays


def _predict(forward: Forward | None, state: Sequence[Any], x: Any, directory: Path):
    if forward is None:
        raise ArtifactError(f"{directory} holds no forward pass (its model could not be exported "
                            "for any batch size, or an older luxc compiled it); recompile it")
    outs = forward(state, x)
    return outs[0] if len(outs) == 1 else outs


class Predictor:
    """An artifact's forward pass and a state to run it with (the artifact's initial one, or a
    checkpoint's after :meth:`load_state`); what ``luxc predict`` runs."""

    def __init__(self, directory: Path, manifest: Manifest, forward: Forward,
                 state: list[np.ndarray]):
        self.directory, self.manifest, self.forward, self.state = directory, manifest, forward, \
            state
        self.step_count = manifest.layout.step

    def load_state(self, path: str | Path) -> None:
        """Use the parameters and model state of the checkpoint at ``path``."""
        self.state, ckpt = state_from_checkpoint(path, self.manifest)
        self.step_count = ckpt.step

    def predict(self, x: Any) -> np.ndarray | list[np.ndarray]:
        return _predict(self.forward, self.state, x, self.directory)
