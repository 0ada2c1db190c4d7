"""A training step loaded from an artefact: runnable without the model's source, one step or
K steps per compiled call."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax import export as jax_export

from luxc.runtime import persistent_cache
from luxc.runtime.artifact_format import Artifact
from luxc.runtime.artifact_mesh import put
from luxc.runtime.atomic_write import write_atomic
from luxc.runtime.errors import ArtifactError
from luxc.runtime.guarded_call import deadline_after, guarded
from luxc.runtime.shown import shown
from luxc.runtime.stages import CompiledStages
from luxc.runtime.tensor_codec import tensor_bytes, tensors_from_bytes


class LoadedStep(CompiledStages):
    """An exported training step loaded from disk, runnable without the model's source.

    ``state`` (parameters, optimiser state and model state, flat) and ``data`` come from the
    artefact; ``step(state, data)`` returns ``(new_state, loss, stats)``; ``run(n)`` trains
    ``n`` steps. ``notes`` records how it was loaded (e.g. a fallback compile) and
    ``executable_source`` is ``"serialized executable"`` or ``"compiled from StableHLO"``.
    """

    def __init__(self, artifact: Artifact, exported: jax_export.Exported,
                 compiled: jax.stages.Compiled, executable_source: str, notes: list[str],
                 shardings: Sequence[Any]):
        self.directory, self.manifest = artifact.directory, artifact.manifest
        self.exported, self.compiled, self._call = exported, compiled, compiled
        self.executable_source, self.notes = executable_source, notes
        # A stranger's step may never end: it runs where Ctrl-C stops it (guarded_call).
        self.signed_by_this_user = artifact.signed_by_this_user
        self._text = artifact.files["step.mlir"].decode("utf-8", errors="replace")
        self.layout = artifact.manifest["layout"]
        n_state = self.layout["n_state"]
        state = _tensors(artifact, "state.safetensors", self.manifest["inputs"][:n_state])
        data = _tensors(artifact, "data.safetensors", self.manifest["inputs"][n_state:])
        self._shardings = list(shardings)  # None for each input on one device
        self.state = put(state, self._shardings[:n_state])
        self.data = put(data, self._shardings[n_state:])
        self.step_count = int(self.layout["step"])
        self._scans: dict[int, Callable] = {}

    @property
    def pass_report(self) -> list[dict[str, Any]]:
        return self.manifest["pass_report"]

    def stages(self) -> tuple[str, ...]:
        return ("optimized", "hlo")

    def _stage_text(self, stage: str) -> str | None:
        if stage == "optimized":
            return self._text
        return self.compiled.as_text() if stage == "hlo" else None

    def _figures_source(self) -> jax.stages.Compiled:
        return self.compiled

    def check_data(self, data: Sequence[Any]) -> list[jax.Array]:
        expected = self.manifest["inputs"][len(self.state):]
        if len(data) != len(expected):
            raise ArtifactError(f"the step takes {len(expected)} data arrays; received {len(data)}")
        out = []
        for name, x, spec, sharding in zip(self.layout["data_names"], data, expected,
                                           self._shardings[len(self.state):]):
            if list(np.shape(x)) != spec["shape"] or str(np.asarray(x).dtype) != spec["dtype"]:
                raise ArtifactError(f"{shown(name, 200)} has shape {list(np.shape(x))} and dtype "
                                    f"{np.asarray(x).dtype}; the step was compiled for shape "
                                    f"{spec['shape']} and dtype {spec['dtype']}")
            out.extend(put([x], [sharding]))
        return out

    def __call__(self, state: Sequence[Any], data: Sequence[Any]):
        outs = self._call(*state, *data)
        n = len(self.state)
        return list(outs[:n]), outs[n], list(outs[n + 1:])

    def run(self, steps: int, data: Sequence[Any] | None = None,
            on_step: Callable[[int, float], None] | None = None, *,
            steps_per_call: int = 1, time_limit: float | None = None) -> list[float]:
        """Train ``steps`` steps from the current state; returns the losses.

        ``steps_per_call=K`` runs K steps in one compiled call (a ``lax.scan`` of the stored
        step, compiled from its StableHLO once), Keras's ``steps_per_execution``: the host
        waits for the device once per K steps. ``on_step`` still sees every step's loss.

        ``time_limit`` (seconds, the whole run) raises
        :class:`~luxc.runtime.guarded_call.TimeLimitExceeded` when reached, with the state of
        the last finished call kept. The steps of an artefact this user did not sign, or of any
        run with a time limit, run where Ctrl-C stops them (``KeyboardInterrupt``) even inside
        a call that never returns."""
        if steps_per_call < 1:
            raise ValueError(f"steps_per_call must be at least 1; received {steps_per_call}")
        data = self.data if data is None else self.check_data(data)
        deadline = deadline_after(time_limit)
        losses: list[float] = []
        while len(losses) < steps:
            k = min(steps_per_call, steps - len(losses))

            def call(k=k, state=self.state):
                if k == 1:
                    new, loss, _ = self(state, data)
                    return new, [float(loss)]
                new, chunk_losses = self._scanned(k)(state, data)
                return new, [float(x) for x in np.asarray(chunk_losses)]

            if deadline is None and self.signed_by_this_user:
                self.state, chunk = call()
            else:
                first = self.step_count + 1
                self.state, chunk = guarded(call, deadline, f"step{'s' if k > 1 else ''} "
                                            f"{first}{f'-{first + k - 1}' if k > 1 else ''}")
            for loss in chunk:
                self.step_count += 1
                losses.append(loss)
                if on_step is not None:
                    on_step(self.step_count, loss)
        return losses

    def _scanned(self, k: int) -> Callable:
        """``k`` steps as one executable, compiled once per ``k`` (data: the stored StableHLO)."""
        if k not in self._scans:
            n, call = len(self.state), self.exported.call

            def steps(state, data):
                def body(carry, _):
                    outs = call(*carry, *data)
                    return list(outs[:n]), outs[n]

                return jax.lax.scan(body, list(state), None, length=k)

            lowered = jax.jit(steps).lower(self.state, self.data)
            with persistent_cache.compiling():
                self._scans[k] = lowered.compile()
        return self._scans[k]

    def save_state(self, path: str | Path) -> None:
        """Write the current state (and step) to a safetensors file, atomically."""
        write_atomic(path, tensor_bytes(self.state, {"step": str(self.step_count),
                                                     "format": "luxc-flat-state"}))


def _tensors(artifact: Artifact, name: str, specs: list[dict[str, Any]]) -> list[np.ndarray]:
    arrays, _ = tensors_from_bytes(artifact.files[name], f"{artifact.directory / name}")
    if len(arrays) != len(specs):
        raise ArtifactError(f"{artifact.directory / name} holds {len(arrays)} arrays; the manifest "
                            f"lists {len(specs)}")
    for i, (a, spec) in enumerate(zip(arrays, specs)):
        if list(a.shape) != spec["shape"] or str(a.dtype) != spec["dtype"]:
            raise ArtifactError(f"{artifact.directory / name}: array {i} is {a.dtype}"
                                f"{list(a.shape)}; the manifest says {spec['dtype']}"
                                f"{spec['shape']}")
    return arrays
