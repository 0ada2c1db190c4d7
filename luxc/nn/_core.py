"""The LuxCore model: a layer is an immutable description; parameters and state live outside.

``ps, st = setup(key, layer)`` draws the parameters and the initial state; ``layer(x, ps, st)``
returns ``(y, new_st)``. ``ps`` and ``st`` are nested ``dict``s of ``jax.Array`` (pytrees), so
every ``jax.tree_util`` function and every optax optimiser works on them directly.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable, Iterator
from typing import Any

import jax
import numpy as np

from luxc.nn import _draws
from luxc.nn._stability import check_output, enabled, floating_dtype

PyTree = Any


@jax.tree_util.register_pytree_node_class
class Val:
    """A static value inside a pytree, Lux's ``Val(true)``.

    ``Val`` has no children: its value is part of the tree *structure*, so it is never traced,
    and changing it (``trainmode`` → ``testmode``) changes the compiled program's key rather than
    a runtime input. ``bool(Val(True))`` is ``True``.
    """

    __slots__ = ("value",)

    def __init__(self, value: Hashable):
        self.value = value

    def __bool__(self) -> bool:
        return bool(self.value)

    def __eq__(self, other: object) -> bool:
        # The type takes part so that Val(1) and Val(True) are different program keys.
        return (isinstance(other, Val) and type(self.value) is type(other.value)
                and self.value == other.value)

    def __hash__(self) -> int:
        return hash((Val, type(self.value), self.value))

    def __repr__(self) -> str:
        # A function prints by name, not address: the repr is part of the pytree structure's
        # text, which checkpoints compare across processes.
        name = getattr(self.value, "__name__", None) if callable(self.value) else None
        return f"Val({name or repr(self.value)})"

    def tree_flatten(self):
        return (), self

    @classmethod
    def tree_unflatten(cls, aux, children):
        return aux


def _checked(call: Callable) -> Callable:
    @functools.wraps(call)
    def checked_call(self: AbstractLayer, *args: Any, **kwargs: Any) -> Any:
        out = call(self, *args, **kwargs)
        if enabled("luxcore") and len(args) >= 2:  # the LuxCore call, layer(x, ps, st)
            x, ps = args[:2]
            expected = floating_dtype(ps) or floating_dtype(x)
            check_output("luxcore", self.summary(), expected, out[0])
        return out

    return checked_call


class LayerShapeError(ValueError):
    """An input whose shape a layer cannot take; the message names the layer and both shapes."""


class AbstractLayer:
    """Base class of every luxc layer (LuxCore's ``AbstractLuxLayer``).

    Subclasses hold only static configuration and implement ``init_parameters``,
    ``init_states`` (both default to ``{}``) and ``__call__(x, ps, st) -> (y, st)``. Every
    subclass's ``__call__`` is checked for type stability when the ``luxcore`` level of
    ``luxc.set_dispatch_doctor_preferences`` is on (a no-op by default).
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        call = cls.__dict__.get("__call__")
        if call is not None:
            cls.__call__ = _checked(call)

    def init_parameters(self, key: jax.Array) -> dict:
        return {}

    def init_states(self, key: jax.Array) -> dict:
        return {}

    def __call__(self, x: Any, ps: dict, st: dict) -> tuple[Any, dict]:
        raise TypeError(f"{type(self).__name__} does not define __call__(x, ps, st)")

    def summary(self) -> str:
        """One line in Lux's style, e.g. ``Dense(784 => 512, relu)``."""
        return type(self).__name__ + "()"

    def __repr__(self) -> str:
        return render(self)

    def _check_rank(self, x: jax.Array, min_rank: int, what: str) -> None:
        if np.ndim(x) < min_rank:
            raise LayerShapeError(
                f"{self.summary()} expects {what}; received an input of shape {np.shape(x)}"
            )

    def _check_features(self, x: jax.Array, expected: int, axis: int = -1) -> None:
        shape = np.shape(x)
        if len(shape) == 0 or shape[axis] != expected:
            raise LayerShapeError(
                f"{self.summary()} expects {expected} features on axis {axis} "
                f"(input shape (..., {expected})); received an input of shape {shape}"
            )


class AbstractContainerLayer(AbstractLayer):
    """A layer made of named sub-layers; its ``ps``/``st`` hold one entry per sub-layer."""

    def sublayers(self) -> dict[str, AbstractLayer]:
        raise TypeError(f"{type(self).__name__} does not define sublayers()")

    def init_parameters(self, key: jax.Array) -> dict:
        layers = self.sublayers()
        keys = _split(key, len(layers))
        return {n: layer.init_parameters(k) for (n, layer), k in zip(layers.items(), keys)}

    def init_states(self, key: jax.Array) -> dict:
        layers = self.sublayers()
        keys = _split(key, len(layers))
        return {n: layer.init_states(k) for (n, layer), k in zip(layers.items(), keys)}


def named_layers(owner: str, layers: tuple, named: dict, wrap: Callable | None = None
                 ) -> dict[str, AbstractLayer]:
    """A container's layers by name, as Lux's two forms: positional layers are ``layer_1`` …
    ``layer_n``; keyword layers keep their names (in order). ``wrap`` turns a plain callable
    into a layer (``Chain`` wraps functions); otherwise only luxc layers are accepted."""
    if layers and named:
        raise TypeError(f"{owner}: give the layers positionally or as keywords, not both "
                        f"(received {len(layers)} positional and {sorted(named)})")
    items = named.items() if named else ((f"layer_{i + 1}", x) for i, x in enumerate(layers))
    out = {}
    for name, layer in items:
        if not isinstance(layer, AbstractLayer):
            if wrap is None or not callable(layer):
                what = "a luxc layer or a callable" if wrap else "a luxc layer"
                raise TypeError(f"{owner}: {name} must be {what}; received "
                                f"{type(layer).__name__}")
            layer = wrap(layer)
        out[name] = layer
    return out


def _split(key: jax.Array, n: int) -> list[jax.Array]:
    return _draws.split(key, n) if n else []


def _as_key(key: Any) -> jax.Array:
    if isinstance(key, int):
        return jax.random.key(key)
    if not isinstance(key, jax.Array | np.ndarray):
        raise TypeError(
            f"setup expects a jax.random key (jax.random.key(0)) or an int seed; "
            f"received {type(key).__name__}"
        )
    return key


def setup(key: jax.Array | int, layer: AbstractLayer) -> tuple[dict, dict]:
    """Draw the parameters and the initial state of ``layer`` from ``key``.

    The same key always gives the same ``(ps, st)``; parameters and state use independent
    sub-keys so adding state to a layer does not change its parameters.

    >>> import jax, luxc
    >>> ps, st = luxc.setup(jax.random.key(0), luxc.nn.Dense(3, 2))
    >>> ps["weight"].shape, ps["bias"].shape
    ((2, 3), (2,))
    """
    if not isinstance(layer, AbstractLayer):
        raise TypeError(f"setup expects a luxc layer; received {type(layer).__name__}")
    kp, ks = _draws.split(_as_key(key))
    return layer.init_parameters(kp), layer.init_states(ks)


def apply(layer: AbstractLayer, x: Any, ps: dict, st: dict) -> tuple[Any, dict]:
    """``layer(x, ps, st)``, LuxCore's ``apply``."""
    return layer(x, ps, st)


def _count(tree: PyTree) -> int:
    # A static Val counts as one, as LuxCore's ``statelength(::Any) = 1``.
    leaves = jax.tree_util.tree_leaves(tree, is_leaf=lambda v: isinstance(v, Val))
    return sum(1 if isinstance(leaf, Val) else int(np.size(leaf)) for leaf in leaves)


def parameter_count(layer: AbstractLayer) -> int:
    """Number of trainable scalars of ``layer`` (computed from shapes only, nothing drawn)."""
    shapes = jax.eval_shape(layer.init_parameters, jax.random.key(0))
    return _count(shapes)


def state_count(layer: AbstractLayer) -> int:
    """Number of state scalars of ``layer``: array elements, plus one per static ``Val`` (a
    ``training`` flag, a function kept by ``@compact``), as LuxCore's ``statelength``."""
    return _count(jax.eval_shape(layer.init_states, jax.random.key(0)))


def _set_training(st: PyTree, value: bool) -> PyTree:
    if isinstance(st, dict):
        return {
            k: Val(value) if k == "training" and isinstance(v, Val) else _set_training(v, value)
            for k, v in st.items()
        }
    if isinstance(st, list | tuple):
        return type(st)(_set_training(v, value) for v in st)
    return st


def _fmt_int(n: int) -> str:
    return f"{n:_}"


def _children(layer: AbstractLayer) -> Iterator[tuple[str, AbstractLayer]]:
    if isinstance(layer, AbstractContainerLayer):
        yield from layer.sublayers().items()


def render(layer: AbstractLayer, indent: int = 0) -> str:
    """Lux-style printing: the layer tree, parameter counts on the right, totals at the end."""
    lines = _render_lines(layer, indent)
    if indent == 0:
        total = f"Total: {_fmt_int(parameter_count(layer))} parameters,"
        if len(lines) == 1:  # a leaf layer: its own count is the total
            total = lines[0][1] or total
        lines[-1] = (lines[-1][0], total)
        width = max(len(line) for line, _ in lines)
        out = [f"{line:<{width}}  # {note}" if note else line for line, note in lines]
        out.append(f"{'':<{width}}  #        plus {_fmt_int(state_count(layer))} states.")
        return "\n".join(out)
    return "\n".join(line for line, _ in lines)


def _render_lines(layer: AbstractLayer, indent: int) -> list[tuple[str, str]]:
    pad = "    " * indent
    custom = getattr(layer, "_render_lines", None)
    if custom is not None:
        return custom(indent)
    children = list(_children(layer))
    if not children:
        n = parameter_count(layer)
        return [(pad + layer.summary(), f"{_fmt_int(n)} parameters" if n else "")]
    lines = [(pad + type(layer).__name__ + "(", "")]
    for name, child in children:
        sub = _render_lines(child, indent + 1)
        first, note = sub[0]
        lines.append((f"{pad}    {name} = {first.strip()}", note))
        lines.extend(sub[1:])
        lines[-1] = (lines[-1][0] + ",", lines[-1][1])
    lines.append((pad + ")", ""))
    return lines
