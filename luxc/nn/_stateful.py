"""StatefulLuxLayer and LuxCore's state helpers: trainmode, testmode, update_state."""

from __future__ import annotations

from typing import Any

from luxc.nn._core import AbstractLayer, PyTree, _set_training


class StatefulLuxLayer:
    """``f = StatefulLuxLayer(model, ps, st)``; ``f(x)`` returns ``y`` and keeps the new state
    in ``f.st``. ``f(x, ps)`` uses other parameters (e.g. inside a gradient), as Lux's
    ``smodel(x, ps)``. ``trainmode(f)``, ``testmode(f)`` and ``update_state(f, key, value)``
    return a new StatefulLuxLayer, as LuxCore's methods for it.

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


def _on_state(st: Any, fn: Any) -> Any:
    if isinstance(st, StatefulLuxLayer):
        return StatefulLuxLayer(st.model, st.ps, fn(st.st))
    return fn(st)


def trainmode(st: PyTree | StatefulLuxLayer) -> PyTree | StatefulLuxLayer:
    """``st`` with every ``training`` flag set to ``Val(True)`` (a StatefulLuxLayer: a new one
    whose state is)."""
    return _on_state(st, lambda s: _set_training(s, True))


def testmode(st: PyTree | StatefulLuxLayer) -> PyTree | StatefulLuxLayer:
    """``st`` with every ``training`` flag set to ``Val(False)`` (BatchNorm uses its running
    statistics, Dropout is the identity); a StatefulLuxLayer gives a new one."""
    return _on_state(st, lambda s: _set_training(s, False))


def _replace_key(st: Any, key: str, value: Any) -> Any:
    if isinstance(st, dict):
        return {k: value if k == key else _replace_key(v, key, value) for k, v in st.items()}
    if isinstance(st, list | tuple):
        return type(st)(_replace_key(v, key, value) for v in st)
    return st


def update_state(st: PyTree | StatefulLuxLayer, key: str, value: Any) -> PyTree | StatefulLuxLayer:
    """LuxCore's ``update_state``: every entry named ``key``, at any depth, replaced by ``value``.

    >>> import luxc
    >>> update_state({"a": {"rate": 1}, "rate": 2}, "rate", 0)
    {'a': {'rate': 0}, 'rate': 0}
    """
    return _on_state(st, lambda s: _replace_key(s, key, value))
