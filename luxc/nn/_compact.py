"""``@luxc.compact``: a layer written as one forward function, Lux's ``@compact``.

Keyword fields are sorted by what they are:

* a layer, or a list/tuple of layers → sub-layers (their ``ps``/``st`` nest under the name);
* an array → a trainable parameter;
* ``init_fn(fn, kind)`` → ``fn(key)`` drawn at ``setup``, into ``ps`` or ``st``;
* ``non_trainable(x)`` → ``x`` placed in ``st``;
* anything else (functions, numbers) → a static value, used as is.

The forward function receives ``self`` (a view on the fields, with sub-layers bound to their
parameters and state) and the input; ``forward(self, x, p)`` also receives the parameters.
"""

from __future__ import annotations

import inspect
import textwrap
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from ._core import AbstractLayer, _fmt_int, _split, parameter_count
from ._stateful import StatefulLuxLayer

_RESERVED = ("name", "dispatch")


@dataclass(frozen=True)
class InitFn:
    """A value drawn at ``setup`` time: ``fn(key)`` into the parameters or the state."""

    fn: Callable[[jax.Array], Any]
    kind: Literal["parameter", "state"] = "parameter"


@dataclass(frozen=True)
class NonTrainable:
    """A value placed in the state: carried along, never differentiated."""

    value: Any


def init_fn(fn: Callable[[jax.Array], Any], kind: str = "parameter") -> InitFn:
    """Lux's ``@init_fn``: ``fn(key)`` initialises a ``"parameter"`` (default) or a ``"state"``."""
    if kind not in ("parameter", "state"):
        raise ValueError(f"init_fn: kind must be 'parameter' or 'state'; received {kind!r}")
    if not callable(fn):
        raise TypeError(f"init_fn expects a callable fn(key); received {type(fn).__name__}")
    return InitFn(fn, kind)  # type: ignore[arg-type]


def non_trainable(x: Any) -> NonTrainable:
    """Lux's ``@non_trainable``: ``x`` goes into the state, not the parameters."""
    return NonTrainable(x)


def _is_array(v: Any) -> bool:
    return isinstance(v, jax.Array | np.ndarray)


def _is_layer_list(v: Any) -> bool:
    return isinstance(v, list | tuple) and bool(v) and all(isinstance(x, AbstractLayer) for x in v)


class _Scope:
    """What ``self`` is inside the forward function."""

    def __init__(self, layer: CompactLayer, ps: dict, st: dict):
        self._bound: dict[str, Any] = {}
        for name, v in layer.fields.items():
            if isinstance(v, AbstractLayer):
                self._bound[name] = StatefulLuxLayer(v, ps[name], st[name])
            elif _is_layer_list(v):
                self._bound[name] = [
                    StatefulLuxLayer(sub, p, s) for sub, p, s in zip(v, ps[name], st[name])
                ]
            elif _is_array(v) or (isinstance(v, InitFn) and v.kind == "parameter"):
                self._bound[name] = ps[name]
            elif isinstance(v, NonTrainable) or isinstance(v, InitFn):
                self._bound[name] = st[name]
            else:
                self._bound[name] = v

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["_bound"][name]
        except KeyError:
            raise AttributeError(f"compact layer has no field {name!r}") from None

    def new_states(self, st: dict) -> dict:
        out = dict(st)
        for name, b in self._bound.items():
            if isinstance(b, StatefulLuxLayer):
                out[name] = b.st
            elif isinstance(b, list) and b and isinstance(b[0], StatefulLuxLayer):
                out[name] = [s.st for s in b]
        return out


class CompactLayer(AbstractLayer):
    """The layer ``@luxc.compact`` builds (Lux's ``CompactLuxLayer``).

    ``dispatch`` is a tag users may branch on (``layer.dispatch``), as Lux's type parameter.
    """

    def __init__(
        self,
        forward: Callable,
        fields: dict[str, Any],
        *,
        name: str | None = None,
        dispatch: Hashable | None = None,
    ):
        nargs = len(inspect.signature(forward).parameters)
        if nargs not in (2, 3):
            raise TypeError(
                "compact: the forward function must take (self, x) or (self, x, p); "
                f"{getattr(forward, '__name__', 'it')} takes {nargs} arguments"
            )
        self.forward, self.fields, self.name, self.dispatch = forward, dict(fields), name, dispatch
        self._with_params = nargs == 3

    def init_parameters(self, key: jax.Array) -> dict:
        ps = {}
        for (name, v), k in zip(self.fields.items(), _split(key, len(self.fields))):
            if isinstance(v, AbstractLayer):
                ps[name] = v.init_parameters(k)
            elif _is_layer_list(v):
                ps[name] = [sub.init_parameters(kk) for sub, kk in zip(v, _split(k, len(v)))]
            elif _is_array(v):
                ps[name] = jnp.asarray(v)
            elif isinstance(v, InitFn) and v.kind == "parameter":
                ps[name] = v.fn(k)
        return ps

    def init_states(self, key: jax.Array) -> dict:
        st = {}
        for (name, v), k in zip(self.fields.items(), _split(key, len(self.fields))):
            if isinstance(v, AbstractLayer):
                st[name] = v.init_states(k)
            elif _is_layer_list(v):
                st[name] = [sub.init_states(kk) for sub, kk in zip(v, _split(k, len(v)))]
            elif isinstance(v, NonTrainable):
                st[name] = jnp.asarray(v.value) if _is_array(v.value) else v.value
            elif isinstance(v, InitFn) and v.kind == "state":
                st[name] = v.fn(k)
        return st

    def __call__(self, x: Any, ps: dict, st: dict) -> tuple[Any, dict]:
        scope = _Scope(self, ps, st)
        y = self.forward(scope, x, ps) if self._with_params else self.forward(scope, x)
        return y, scope.new_states(st)

    def summary(self) -> str:
        return self.name or f"@compact({', '.join(self.fields)})"

    def _field_line(self, name: str, v: Any) -> tuple[str, str]:
        if isinstance(v, AbstractLayer):
            n = parameter_count(v)
            return f"{name} = {v.summary()},", f"{_fmt_int(n)} parameters" if n else ""
        if _is_layer_list(v):
            n = sum(parameter_count(s) for s in v)
            kinds = {s.summary() for s in v}
            what = f"[{kinds.pop()}] × {len(v)}" if len(kinds) == 1 else f"[{len(v)} layers]"
            each = f" ({_fmt_int(n // len(v))} x {len(v)})" if len(set(map(repr, v))) == 1 else ""
            return f"{name} = {what},", f"{_fmt_int(n)}{each} parameters" if n else ""
        if _is_array(v):
            return f"{name} = {jnp.asarray(v).dtype}{list(np.shape(v))},", ""
        if isinstance(v, InitFn):
            return f"{name} = init_fn({getattr(v.fn, '__name__', 'fn')}, {v.kind!r}),", ""
        if isinstance(v, NonTrainable):
            return f"{name} = non_trainable({_short(v.value)}),", ""
        return f"{name} = {_short(v)},", ""

    def _render_lines(self, indent: int) -> list[tuple[str, str]]:
        pad = "    " * indent
        if self.name is not None:
            n = parameter_count(self)
            return [(pad + self.name, f"{_fmt_int(n)} parameters")]
        lines = [(pad + "@compact(", "")]
        lines += [(pad + "    " + line, note) for line, note in
                  (self._field_line(k, v) for k, v in self.fields.items())]
        lines.append((pad + f") do {', '.join(self._arg_names())}", ""))
        lines += [(pad + "    " + line, "") for line in _body(self.forward)]
        lines.append((pad + "end", ""))
        return lines

    def _arg_names(self) -> list[str]:
        return list(inspect.signature(self.forward).parameters)[1:]


def _short(v: Any) -> str:
    if _is_array(v):
        return f"{jnp.asarray(v).dtype}{list(np.shape(v))}"
    return getattr(v, "__name__", None) or repr(v)


def _body(fn: Callable) -> list[str]:
    try:
        src = textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError):
        return ["..."]
    lines = src.splitlines()
    start = next((i for i, line in enumerate(lines) if line.lstrip().startswith("def ")), 0)
    while start < len(lines) and not lines[start].rstrip().endswith(":"):
        start += 1
    return [line for line in textwrap.dedent("\n".join(lines[start + 1:])).splitlines() if line]


def compact(
    forward: Callable | None = None,
    *,
    name: str | None = None,
    dispatch: Hashable | None = None,
    **fields: Any,
) -> Any:
    """Build a layer from a forward function and its fields (Lux's ``@compact``).

    ``name=`` replaces the printed summary; ``dispatch=`` is stored as ``layer.dispatch``.

    >>> import jax, jax.numpy as jnp, luxc
    >>> @luxc.compact(w=jnp.ones(3))
    ... def linear(self, x):
    ...     return self.w * x
    >>> ps, st = luxc.setup(jax.random.key(0), linear)
    >>> linear(jnp.array([1.0, 2.0, 3.0]), ps, st)[0].tolist()
    [1.0, 2.0, 3.0]
    """
    for r in _RESERVED:
        if r in fields:
            raise TypeError(f"compact: {r!r} is reserved")

    def build(fn: Callable) -> CompactLayer:
        return CompactLayer(fn, fields, name=name, dispatch=dispatch)

    return build(forward) if forward is not None else build


