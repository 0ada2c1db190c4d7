"""What a compiled program says about itself, written once for every compiled object luxc hands
out (``Executable``, ``CompiledStep``, a loaded artifact step): the ``jax.stages.Compiled``-like
surface ``as_text(stage)``, ``cost_analysis()`` and ``memory_analysis()``, and luxc's
``step_flops()``.

A class gets the surface by deriving from :class:`CompiledStages` and defining ``_stage_text(stage)``
and ``_figures_source()`` (the ``jax.stages.Compiled`` to ask, or ``None``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Literal

import jax

from luxc.runtime.performance._hlo_flops import step_flops

Stage = Literal["traced", "optimized", "hlo"]
STAGES: tuple[Stage, ...] = ("traced", "optimized", "hlo")

# XLA also reports per-operand figures ("bytes accessed0{}", "utilization1{}"), which name
# HLO operand indices no user can map back to their arrays; only the totals are kept.
COST_KEYS = ("flops", "transcendentals", "bytes accessed", "optimal_seconds")


def cost_figures(compiled: jax.stages.Compiled | None) -> dict[str, float] | None:
    """XLA's totals for ``compiled``: ``flops``, ``transcendentals``, ``bytes accessed`` and
    (when XLA estimates it) ``optimal_seconds``; ``None`` if XLA gives none."""
    if compiled is None:
        return None
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - an optional query: some backends do not implement it
        return None
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else None
    if not cost:
        return None
    return {k: float(cost[k]) for k in COST_KEYS if k in cost}


def memory_figures(compiled: jax.stages.Compiled | None) -> dict[str, int] | None:
    """XLA's memory figures for ``compiled`` in bytes (``argument_size_in_bytes``,
    ``output_size_in_bytes``, ``alias_size_in_bytes``, ``temp_size_in_bytes`` …), or ``None``."""
    if compiled is None:
        return None
    try:
        stats = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - as cost_figures
        return None
    if stats is None:
        return None
    return {k: int(getattr(stats, k)) for k in dir(stats)
            if k.endswith("_in_bytes") and not k.startswith("_")}


class CompiledStages(ABC):
    """The shared surface: ``as_text``, ``cost_analysis``, ``memory_analysis``
    (``memory_stats`` is the same figures under luxc's earlier name)."""

    @abstractmethod
    def _stage_text(self, stage: str) -> str | None:
        """The text of ``stage``, or ``None`` if this object does not have that stage."""

    @abstractmethod
    def _figures_source(self) -> Any:
        """The ``jax.stages.Compiled`` XLA's figures come from, or ``None``."""

    def as_text(self, stage: Stage = "optimized") -> str:
        """The module before luxc's passes (``"traced"``), after them (``"optimized"``), or
        XLA's optimised HLO (``"hlo"``)."""
        text = self._stage_text(stage) if stage in STAGES else None
        if text is None:
            raise ValueError(f"as_text: stage must be one of {', '.join(map(repr, self.stages()))}; "
                             f"received {stage!r}")
        return text

    def stages(self) -> tuple[str, ...]:
        """The stages ``as_text`` can show for this object."""
        return STAGES

    def cost_analysis(self) -> dict[str, float] | None:
        """XLA's cost totals (``flops``, ``transcendentals``, ``bytes accessed``,
        ``optimal_seconds``), or ``None`` if unavailable."""
        return cost_figures(self._figures_source())

    def step_flops(self) -> float | None:
        """FLOPs of one call, counted from XLA's optimised HLO with each loop's body times its
        trip count; XLA's ``cost_analysis()["flops"]`` counts a loop's body once, so for a
        12-block ``Stack`` it gives about one block's. Falls back on XLA's figure where the
        HLO does not say how often a loop runs; ``None`` if neither is known."""
        text = self._stage_text("hlo")
        counted = step_flops(text) if text else None
        if counted is not None:
            return float(counted)
        return (self.cost_analysis() or {}).get("flops")

    def memory_analysis(self) -> dict[str, int] | None:
        """XLA's memory figures (argument, output, alias, temp … bytes), or ``None``."""
        return memory_figures(self._figures_source())

    def memory_stats(self) -> dict[str, int] | None:
        """``memory_analysis()`` (luxc's earlier name, kept for existing code)."""
        return self.memory_analysis()
