"""``@luxc.compact``: a layer written as one forward function, Lux's ``@compact``.

Each keyword field is classified once, when the layer is built, as Lux's ``compact.jl`` does:

* a layer, or a list/tuple/dict of layers → sub-layers (their ``ps``/``st`` nest under the
  name, in the same container);
* an array, or a list/tuple/dict of arrays → trainable parameters;
* ``init_fn(fn, kind)`` → ``fn(key)`` drawn at ``setup``, into ``ps`` or ``st``;
* ``non_trainable(x)`` → ``x`` in ``st``, its arrays and numbers as device arrays;
* anything else (a function, a number, a string, a container of those) → ``st`` as a static
  :class:`~luxc.Val`: usable in Python control flow and shapes; assigning it in the forward
  function (``self.incr *= 10``) persists in the returned state, and under ``AutoXLA`` a new
  value is a new program. For a value that changes every step use ``non_trainable``.

A container mixing layers with other values, or arrays with non-arrays, is an error.

The forward function receives ``self`` (a view on the fields, with sub-layers bound to their
parameters and state) and the input; ``forward(self, x, p)`` also receives the parameters.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from numbers import Number
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from luxc.nn._core import AbstractLayer, Val, _fmt_int, _split, parameter_count
from luxc.nn._stateful import StatefulLuxLayer

_RESERVED = ("name", "dispatch")
Kind = Literal["layer", "parameter", "state"]


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


def _leaves(v: Any) -> list:
    return jax.tree_util.tree_leaves(v, is_leaf=lambda x: isinstance(x, Val))


def _check_static(name: str, v: Any) -> None:
    for leaf in _leaves(v):
        if not _is_array(leaf) and not isinstance(leaf, Val):
            try:
                hash(leaf)
            except TypeError:
                raise TypeError(
                    f"compact: field {name!r} holds a {type(leaf).__name__}, which is neither a "
                    "layer, an array nor hashable, so it cannot be a static state value; wrap "
                    "its arrays in non_trainable(...) or capture it in the forward function"
                ) from None


def classify(name: str, v: Any) -> Kind:
    """Where field ``name = v`` lives: ``"layer"``, ``"parameter"`` or ``"state"``."""
    if isinstance(v, AbstractLayer):
        return "layer"
    if isinstance(v, InitFn):
        return v.kind
    if isinstance(v, NonTrainable):
        _check_static(name, v.value)
        return "state"
    leaves = _leaves(v)
    layers = [isinstance(leaf, AbstractLayer) for leaf in leaves]
    arrays = [_is_array(leaf) for leaf in leaves]
    for found, what in ((layers, "luxc layers"), (arrays, "arrays")):
        if any(found) and not all(found):
            raise TypeError(
                f"compact: field {name!r} is a container mixing {what} with other values "
                f"({', '.join(sorted({type(leaf).__name__ for leaf in leaves}))}); a container "
                "must hold only layers (sub-layers), only arrays (parameters) or neither (state)"
            )
    if leaves and all(layers):
        return "layer"
    if leaves and all(arrays):
        return "parameter"
    _check_static(name, v)
    return "state"


def _init_layers(v: Any, want: Kind, key: jax.Array) -> Any:
    """``init_parameters`` or ``init_states`` of a layer, or of each layer of a container."""
    method = "init_parameters" if want == "parameter" else "init_states"
    if isinstance(v, AbstractLayer):
        return getattr(v, method)(key)
    leaves, treedef = jax.tree_util.tree_flatten(v)
    return treedef.unflatten([getattr(layer, method)(k)
                              for layer, k in zip(leaves, _split(key, len(leaves)))])


def _as_state(v: Any, traced_numbers: bool) -> Any:
    def one(leaf: Any) -> Any:
        if _is_array(leaf) or (traced_numbers and isinstance(leaf, Number)):
            return leaf if isinstance(leaf, jax.Array) else jnp.asarray(leaf)
        return leaf if isinstance(leaf, Val) else Val(leaf)

    return jax.tree_util.tree_map(one, v, is_leaf=lambda x: isinstance(x, Val))


def _unwrap(v: Any) -> Any:
    return jax.tree_util.tree_map(lambda x: x.value if isinstance(x, Val) else x, v,
                                  is_leaf=lambda x: isinstance(x, Val))


class _Scope:
    """What ``self`` is inside the forward function."""

    def __init__(self, layer: CompactLayer, ps: dict, st: dict):
        bound: dict[str, Any] = {}
        for name, kind in layer.kinds.items():
            v = layer.fields[name]
            if kind == "layer":
                bound[name] = jax.tree_util.tree_map(StatefulLuxLayer, v, ps[name], st[name])
            elif kind == "parameter":
                bound[name] = ps[name]
            else:
                bound[name] = _unwrap(st[name])
        object.__setattr__(self, "_kinds", layer.kinds)
        object.__setattr__(self, "_bound", bound)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["_bound"][name]
        except KeyError:
            raise AttributeError(f"compact layer has no field {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        kind = self._kinds.get(name)
        if kind != "state":
            what = f"is a {kind}" if kind else "is not a field"
            raise AttributeError(
                f"compact: cannot assign self.{name}: {name!r} {what}; only state fields "
                "(non-array, non-layer values, non_trainable(...), init_fn(..., 'state')) "
                "are updated by the forward function"
            )
        self._bound[name] = value

    def new_states(self, st: dict) -> dict:
        out = dict(st)
        for name, kind in self._kinds.items():
            b = self._bound[name]
            if kind == "layer":
                out[name] = jax.tree_util.tree_map(lambda s: s.st, b)
            elif kind == "state":
                out[name] = _as_state(b, traced_numbers=False)
        return out


class CompactLayer(AbstractLayer):
    """The layer ``@luxc.compact`` builds (Lux's ``CompactLuxLayer``).

    ``kinds`` maps each field to ``"layer"``, ``"parameter"`` or ``"state"``. ``dispatch`` is
    a tag users may branch on (``layer.dispatch``), as Lux's type parameter.
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
        self.kinds: dict[str, Kind] = {k: classify(k, v) for k, v in self.fields.items()}
        self._with_params = nargs == 3

    def _initial(self, key: jax.Array, want: Kind) -> dict:
        out = {}
        for (name, v), k in zip(self.fields.items(), _split(key, len(self.fields))):
            kind = self.kinds[name]
            if kind == "layer":
                out[name] = _init_layers(v, want, k)
            elif kind != want:
                continue
            elif isinstance(v, InitFn):
                out[name] = v.fn(k)
            elif kind == "parameter":
                out[name] = jax.tree_util.tree_map(jnp.asarray, v)
            elif isinstance(v, NonTrainable):
                out[name] = _as_state(v.value, traced_numbers=True)
            else:
                out[name] = _as_state(v, traced_numbers=False)
        return out

    def init_parameters(self, key: jax.Array) -> dict:
        return self._initial(key, "parameter")

    def init_states(self, key: jax.Array) -> dict:
        return self._initial(key, "state")

    def __call__(self, x: Any, ps: dict, st: dict) -> tuple[Any, dict]:
        scope = _Scope(self, ps, st)
        y = self.forward(scope, x, ps) if self._with_params else self.forward(scope, x)
        return y, scope.new_states(st)

    def summary(self) -> str:
        return self.name or f"@compact({', '.join(self.fields)})"

    def _field_line(self, name: str, v: Any) -> tuple[str, str]:
        if self.kinds[name] != "layer":
            return f"{name} = {_describe(v)},", ""
        if isinstance(v, AbstractLayer):
            n = parameter_count(v)
            return f"{name} = {v.summary()},", f"{_fmt_int(n)} parameters" if n else ""
        layers = jax.tree_util.tree_leaves(v)
        n = sum(parameter_count(s) for s in layers)
        kinds = {s.summary() for s in layers}
        if isinstance(v, dict):
            what = "{" + ", ".join(f"{k}: {s.summary()}" for k, s in v.items()) + "}"
        elif len(kinds) == 1:
            what = f"[{kinds.pop()}] × {len(layers)}"
        else:
            what = f"[{len(layers)} layers]"
        same = len(set(map(repr, layers))) == 1 and len(layers) > 1
        each = f" ({_fmt_int(n // len(layers))} x {len(layers)})" if same else ""
        return f"{name} = {what},", f"{_fmt_int(n)}{each} parameters" if n else ""

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


def _describe(v: Any) -> str:
    if isinstance(v, InitFn):
        return f"init_fn({getattr(v.fn, '__name__', 'fn')}, {v.kind!r})"
    if isinstance(v, NonTrainable):
        return f"non_trainable({_describe(v.value)})"
    if _is_array(v):
        return f"{jnp.asarray(v).dtype}{list(np.shape(v))}"
    if isinstance(v, list | tuple):
        inner = ", ".join(_describe(x) for x in v)
        return f"[{inner}]" if isinstance(v, list) else f"({inner})"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_describe(x)}" for k, x in v.items()) + "}"
    return getattr(v, "__name__", None) or repr(v)


def _body(fn: Callable) -> list[str]:
    """The source lines of ``fn``'s body (a one-line ``def`` or a ``lambda`` included)."""
    try:
        src = textwrap.dedent(inspect.getsource(fn))
        tree = ast.parse(src)
    except (OSError, TypeError, SyntaxError):
        return ["..."]
    node = next((n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.Lambda)), None)
    if node is None:
        return ["..."]
    if isinstance(node, ast.Lambda):
        return [ast.get_source_segment(src, node.body) or "..."]
    if node.body[0].lineno == node.lineno:  # def f(self, x): return ...
        return [ast.get_source_segment(src, stmt) or "..." for stmt in node.body]
    lines = src.splitlines()[node.body[0].lineno - 1:node.body[-1].end_lineno]
    return [line for line in textwrap.dedent("\n".join(lines)).splitlines() if line.strip()]


def compact(
    forward: Callable | None = None,
    *,
    name: str | None = None,
    dispatch: Hashable | None = None,
    **fields: Any,
) -> Any:
    """Build a layer from a forward function and its fields (Lux's ``@compact``).

    ``name=`` replaces the printed summary; ``dispatch=`` is stored as ``layer.dispatch``.
    See the module docstring for where each field goes (parameters, state or sub-layers).

    >>> import jax, jax.numpy as jnp, luxc
    >>> @luxc.compact(w=jnp.ones(3), incr=1)
    ... def linear(self, x):
    ...     self.incr *= 10
    ...     return self.w * x + self.incr
    >>> ps, st = luxc.setup(jax.random.key(0), linear)
    >>> y, st = linear(jnp.array([1.0, 2.0, 3.0]), ps, st)
    >>> y.tolist(), st["incr"].value
    ([11.0, 12.0, 13.0], 10)
    """
    for r in _RESERVED:
        if r in fields:
            raise TypeError(f"compact: {r!r} is reserved")

    def build(fn: Callable) -> CompactLayer:
        return CompactLayer(fn, fields, name=name, dispatch=dispatch)

    return build(forward) if forward is not None else build
