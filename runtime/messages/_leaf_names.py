"""A leaf's name in the user's terms: ``parameters['layer_1']['weight']``, ``data[0]``.

Every message and file that names one array of a pytree (recompile reasons, donation warnings,
consumed-state errors, checkpoint and artifact contents) spells it the way the user would index
it: the argument's name, then jax's key path (``['w']``, ``[0]``, ``.field``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax

KeyPath = tuple[Any, ...]


def leaf_name(root: str, path: KeyPath) -> str:
    """``root`` indexed by ``path``: ``leaf_name("data", (SequenceKey(0),)) == "data[0]"``."""
    return root + jax.tree_util.keystr(tuple(path))


def argument_leaf_name(path: KeyPath, names: Sequence[str] = ()) -> str:
    """The name of a leaf of a tuple of arguments or a dict of named parts: its first key is the
    argument (``names[i]`` for the ``i``-th of a tuple, the key itself for a dict), e.g.
    ``parameters['w']`` for ``{"parameters": {"w": ...}}``."""
    head, rest = path[0], path[1:]
    index = getattr(head, "idx", None)
    if index is not None and index < len(names):
        root = names[index]
    elif isinstance(getattr(head, "key", None), str):
        root = head.key
    else:
        root = jax.tree_util.keystr((head,))
    return leaf_name(root, rest)


def leaf_names(tree: Any, root: str) -> list[str]:
    """The names of ``tree``'s leaves, in ``jax.tree_util.tree_leaves`` order."""
    return [leaf_name(root, p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
