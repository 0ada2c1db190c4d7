"""StatefulLuxLayer: a layer bundled with its parameters, keeping its state between calls."""

from __future__ import annotations

from typing import Any

from ._core import AbstractLayer


class StatefulLuxLayer:
    """``f = StatefulLuxLayer(model, ps, st)``; ``f(x)`` returns ``y`` and keeps the new state
    in ``f.st``. ``f(x, ps)`` uses other parameters (e.g. inside a gradient), as Lux's
    ``smodel(x, ps)``.

    It holds mutable Python state, so build it inside the function you trace, not outside.
    """

    __slots__ = ("model", "ps", "st")

    def __init__(self, model: AbstractLayer, ps: Any, st: Any):
        if not isinstance(model, AbstractLayer):
            raise TypeError(f"StatefulLuxLayer expects a luxc layer; received {type(model).__name__}")
        self.model, self.ps, self.st = model, ps, st

    def __call__(self, x: Any, ps: Any = None) -> Any:
        y, self.st = self.model(x, self.ps if ps is None else ps, self.st)
        return y

    def __repr__(self) -> str:
        return f"StatefulLuxLayer({self.model.summary()})"
