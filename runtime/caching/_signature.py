"""The input signature of a compiled program, and what changed between two of them in the
user's words (``data[0]: shape (32, 4) -> (17, 4)``).

A signature is what jax's own dispatch checks before it runs an executable: the pytree
structure of the arguments and, per leaf, shape, dtype, weak type and placement (sharding,
which names the devices, and memory layout). Two calls with equal signatures can share one
executable; any difference compiles another.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax

from luxc.runtime.messages._leaf_names import argument_leaf_name


class Leaf(NamedTuple):
    """One argument leaf as the executable sees it."""

    shape: tuple[int, ...]
    dtype: str
    weak_type: bool
    sharding: Hashable  # names the committed device(s)
    layout: Hashable  # the memory layout, if the array has one


def _leaf(x: Any) -> Leaf:
    dtype = getattr(x, "dtype", None)
    fmt = getattr(x, "format", None) if isinstance(x, jax.Array) else None
    return Leaf(tuple(getattr(x, "shape", ())), str(dtype) if dtype is not None else type(x).__name__,
                bool(getattr(x, "weak_type", False)), getattr(x, "sharding", None),
                getattr(fmt, "layout", None))


@dataclass(frozen=True)
class Signature:
    """The pytree structure of the arguments and one :class:`Leaf` per array."""

    structure: Any
    leaves: tuple[Leaf, ...]

    @classmethod
    def of(cls, args: Any) -> Signature:
        leaves, treedef = jax.tree_util.tree_flatten(args)
        return cls(treedef, tuple(_leaf(x) for x in leaves))


def _is_static_node(node: Any) -> bool:
    # A registered node without children (luxc's Val(True), a Lux flag) keeps its value in the
    # structure; show it as a leaf so that a flipped flag is named by its path.
    if node is None or type(node) in (tuple, list, dict):
        return False
    return not jax.tree_util.tree_leaves(node)  # a leaf would be its own only leaf


def _is_leaf(node: Any) -> bool:
    return isinstance(node, Leaf) or _is_static_node(node)


def _described(sig: Signature, names: Sequence[str]) -> dict[str, Any]:
    tree = jax.tree_util.tree_unflatten(sig.structure, list(sig.leaves))
    out = {}
    for path, value in jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_leaf)[0]:
        out[argument_leaf_name(path, names)] = value
    return out


_MODES = {True: "train mode", False: "test mode"}


def _leaf_change(old: Leaf, new: Leaf) -> str:
    parts = []
    if old.shape != new.shape:
        parts.append(f"shape {old.shape} -> {new.shape}")
    if old.dtype != new.dtype or old.weak_type != new.weak_type:
        weak = {True: " (weakly typed)", False: ""}
        parts.append(f"dtype {old.dtype}{weak[old.weak_type]} -> {new.dtype}{weak[new.weak_type]}")
    if old.sharding != new.sharding:
        parts.append(f"placement {_show_sharding(old.sharding)} -> {_show_sharding(new.sharding)}")
    if old.layout != new.layout:
        parts.append(f"layout {old.layout} -> {new.layout}")
    return ", ".join(parts)


def _show_sharding(sharding: Hashable) -> str:
    devices = getattr(sharding, "device_set", None)
    spec = getattr(sharding, "spec", None)
    kind = type(sharding).__name__ + (f"({spec})" if spec is not None else "")
    return f"{kind} on devices {sorted(d.id for d in devices)}" if devices else str(sharding)


def _value_change(path: str, old: Any, new: Any) -> str:
    text = f"{path}: {old!r} -> {new!r}"
    flag_old, flag_new = getattr(old, "value", None), getattr(new, "value", None)
    if isinstance(flag_old, bool) and isinstance(flag_new, bool) and path.endswith("['training']"):
        text += f" ({_MODES[flag_old]} -> {_MODES[flag_new]})"
    return text


def differences(old: Signature, new: Signature, names: Sequence[str]) -> list[str]:
    """What differs between two signatures, one phrase per leaf that changed, named by its
    path in the arguments (``names`` are the top-level arguments' names)."""
    if old == new:
        return []
    a, b = _described(old, names), _described(new, names)
    out = []
    for path in dict.fromkeys([*a, *b]):
        if path not in b:
            out.append(f"{path} was removed")
        elif path not in a:
            out.append(f"{path} was added")
        elif a[path] != b[path]:
            x, y = a[path], b[path]
            out.append(f"{path}: {_leaf_change(x, y)}" if isinstance(x, Leaf) and isinstance(y, Leaf)
                       else _value_change(path, x, y))
    return out or ["the pytree structure of the arguments"]
