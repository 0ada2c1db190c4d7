"""A Chain's run of repeated layers traced as one loop, as :class:`Stack` runs its layer.

Users write a deep model the way Lux's documentation does, ``Chain([block() for _ in
range(24)])``. Unrolled, the compiled step holds 24 copies of the block: XLA compiles each (the
first step grows with depth), and on CPU the residuals of every block form temporaries mapped
afresh by malloc at each step (page faults, not work). When at least ``MIN_REPEATS`` consecutive
layers are the same layer — same type, same configuration, parameters and states of the same
shapes — and each is activation-heavy, ``Chain`` runs them through ``lax.scan`` over their
parameters stacked inside the step, with :class:`Stack`'s default ``remat``. The parameter and
state trees the user sees are unchanged (``layer_1`` … ``layer_n``), so are the values, up to
rounding.

Measured on the 12- and 24-block transformer of ``benchmarks/depth.py`` (AMD EPYC, 2 cores, one
process each): 539 → 466 ms and 1333 → 915 ms a step, first step 6.5 → 4.4 s and 22 → 8 s. At 4
blocks the unrolled chain was faster (144-168 against 149-191 ms), and so was a chain of eight
``Dense(512, 512)`` (10.6-11.0 against 13.7-14.9 ms: stacking the parameters costs as much as
the layers' work), hence the two thresholds. ``luxc.set_preferences(chain_loop="never")`` keeps
every Chain unrolled.
"""

from __future__ import annotations

import functools
import math
import types
import weakref
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from luxc._preferences import preference
from luxc.nn._core import AbstractLayer
from luxc.nn._stack import Stack
from luxc.runtime._jax_internal import staged

# A run shorter than this stays unrolled (see the module docstring for the measurements).
MIN_REPEATS = 8
# ... and so does one whose unrolled residuals would stay under this many bytes in all.
MIN_RUN_BYTES = 256 * 2**20
# ... or whose layer's intermediates are not at least this many times its parameters' bytes.
MIN_ACTIVATION_RATIO = 4

_PLAIN = (int, float, complex, str, bytes, bool, type(None), type, jnp.dtype)


def same_layer(a: Any, b: Any) -> bool:
    """Whether ``a`` and ``b`` compute the same function of ``(x, ps, st)``: same type and
    equal configuration, recursively. Functions are the same when they share code, globals,
    defaults and equal closures (two calls of one block factory); floats when they print the
    same (``0.0`` is not ``-0.0``); arrays and other objects only when they are one object.
    A configuration that refers back to itself compares as a structure (two blocks each
    holding its parent are the same when the parents are). Layers keep their configuration
    in their attributes and compute from it alone: what a layer reads elsewhere (a global
    table keyed by ``id(self)``, a counter advanced while tracing) is not compared.
    """
    try:
        return _Comparison().same(a, b)
    except RecursionError:  # a pathologically deep configuration: keep the chain unrolled
        return False


class _Comparison:
    """One ``same_layer`` comparison. Each pair of objects is compared once (shared parts of
    a configuration cost nothing more); a pair met again while it is being compared is a
    cycle and assumed the same — every result is a conjunction, so a wrong assumption still
    ends in ``False``. The pairs are kept, objects included, so that no id is reused meanwhile.
    """

    def __init__(self) -> None:
        self.pairs: dict[tuple[int, int], tuple[Any, Any, bool]] = {}

    def same(self, a: Any, b: Any) -> bool:
        if a is b:
            return True
        if type(a) is not type(b):
            return False
        if isinstance(a, float | complex):
            return repr(a) == repr(b)
        if isinstance(a, _PLAIN):
            return a == b
        key = (id(a), id(b))
        if key not in self.pairs:
            self.pairs[key] = (a, b, True)
            self.pairs[key] = (a, b, self._parts(a, b))
        return self.pairs[key][2]

    def _parts(self, a: Any, b: Any) -> bool:
        same = self.same
        if isinstance(a, tuple | list):
            return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
        if isinstance(a, dict):
            return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
        if isinstance(a, types.FunctionType):
            return _same_function(a, b, same)
        if isinstance(a, functools.partial):
            return same((a.func, a.args, a.keywords), (b.func, b.args, b.keywords))
        if isinstance(a, types.MethodType):
            return same((a.__func__, a.__self__), (b.__func__, b.__self__))
        if isinstance(a, AbstractLayer) and not _slots(type(a)):
            return same(vars(a), vars(b))
        return False  # anything else (a layer keeping configuration in slots too): only itself


def _slots(cls: type) -> bool:
    # Whether a class of cls's hierarchy keeps attributes in __slots__, outside vars().
    return any(getattr(k, "__slots__", ()) for k in cls.__mro__ if k is not object)


def _same_function(f: types.FunctionType, g: types.FunctionType, same: Callable) -> bool:
    if f.__code__ is not g.__code__ or f.__globals__ is not g.__globals__:
        return False
    try:
        cells = [[c.cell_contents for c in h.__closure__ or ()] for h in (f, g)]
    except ValueError:  # a closure cell not yet assigned
        return False
    return same((f.__defaults__, f.__kwdefaults__, cells[0]),
                (g.__defaults__, g.__kwdefaults__, cells[1]))


def repeated_runs(layers: list[AbstractLayer]) -> list[tuple[int, int]]:
    """``(start, stop)`` of every maximal run of at least ``MIN_REPEATS`` same layers."""
    runs, start = [], 0
    for i in range(1, len(layers) + 1):
        if i == len(layers) or not same_layer(layers[start], layers[i]):
            if i - start >= MIN_REPEATS:
                runs.append((start, i))
            start = i
    return runs


# layer -> {shapes of (x, ps, st): its intermediates' and parameters' bytes}; weak, so that a
# dropped model takes its entries with it.
_SIZES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _nbytes(a: Any) -> int:
    # A PRNG key's dtype (key<fry>) is no numpy dtype; jax gives it an itemsize.
    return math.prod(a.shape) * getattr(a.dtype, "itemsize", 0)


def _measure(layer: AbstractLayer, x: Any, ps: dict, st: dict) -> tuple[int, int, bool]:
    # Shapes only: the bytes of every value one call computes (its forward's intermediates, a
    # proxy for the residuals an unrolled backward keeps), its parameters' bytes, and whether
    # it maps (x, st) to an output and a state of the same shapes (so that it can loop).
    spec = jax.tree.map(_spec, (x, ps, st))
    try:
        closed, out = jax.make_jaxpr(layer.__call__, return_shape=True)(*spec)
    except Exception:  # noqa: BLE001 - the unrolled call raises it again, naming the layer
        return 0, 0, False
    inter = sum(_nbytes(v.aval) for eqn in closed.jaxpr.eqns for v in eqn.outvars
                if hasattr(v.aval, "shape") and hasattr(v.aval, "dtype"))
    keeps = _signature(out) == _signature((spec[0], spec[2]))
    return inter, sum(_nbytes(a) for a in jax.tree.leaves(spec[1])), keeps


def _spec(a: Any) -> jax.ShapeDtypeStruct:
    # weak_type kept: a weakly typed float32 input meets bfloat16 weights as bfloat16.
    return jax.ShapeDtypeStruct(a.shape, a.dtype, weak_type=getattr(a, "weak_type", False))


def _sizes(layer: AbstractLayer, x: Any, ps: dict, st: dict) -> tuple[int, int, bool]:
    key = str(_signature((x, ps, st)))
    try:
        known = _SIZES.setdefault(layer, {})
    except TypeError:  # a layer class that is not hashable: measured every time
        return _measure(layer, x, ps, st)
    if key not in known:
        known[key] = _measure(layer, x, ps, st)
    return known[key]


def may_loop(n_layers: int, x: Any, ps: dict, st: dict) -> bool:
    """The cheap conditions, checked at every call before any layer is compared: enough
    layers, the preference, and a call traced into a program (run op by op, or under a
    ``jax.grad`` without ``jit``, the loop would be traced again at every call: eight
    transformer blocks took 0.30 s a call against 0.16 unrolled)."""
    return (n_layers >= MIN_REPEATS and preference("chain_loop") != "never"
            and any(staged(a) for a in jax.tree.leaves((x, ps, st))))


def worth_a_loop(layer: AbstractLayer, n: int, x: Any, ps: dict, st: dict) -> bool:
    """Whether ``n`` repetitions of ``layer`` on ``x`` can run as a loop (its output and state
    keep the shapes of its input and state) and run faster so (module docstring); asked of a
    run ``may_loop`` allowed."""
    if not _arrays(x):  # ps and st: same_shapes has checked them
        return False  # a Python number is static: it cannot be carried
    inter, params, keeps = _sizes(layer, x, ps, st)
    return keeps and inter * n >= MIN_RUN_BYTES and inter >= MIN_ACTIVATION_RATIO * params


def _signature(tree: Any) -> tuple:
    return (jax.tree.structure(tree), [(a.shape, a.dtype, getattr(a, "weak_type", False))
                                       for a in jax.tree.leaves(tree)])


def _arrays(tree: Any) -> bool:
    return all(isinstance(a, jax.Array | np.ndarray) for a in jax.tree.leaves(tree))


def same_shapes(trees: list[Any]) -> bool:
    """Whether every tree of ``trees`` holds only arrays, with the structure, shapes and
    dtypes of the first (a Python number in a state is static: it cannot be stacked)."""
    if not all(_arrays(t) for t in trees):
        return False
    first = _signature(trees[0])
    return all(_signature(t) == first for t in trees[1:])


def run_as_loop(layer: AbstractLayer, x: Any, pss: list[dict], sts: list[dict]
                ) -> tuple[Any, list[dict]]:
    """``layer`` applied ``len(pss)`` times, the i-th time with ``pss[i]``, ``sts[i]``, through
    one ``lax.scan`` over the stacked trees; returns the output and each repetition's state."""
    stack = lambda trees: jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)
    y, st = Stack(layer, len(pss))(x, stack(pss), stack(sts))
    return y, [jax.tree.map(lambda a, i=i: a[i], st) for i in range(len(sts))]
