"""Deep models traced once: Stack (n layers, stacked parameters), RepeatedLayer (Lux's weight-shared
repetition) and Remat (activation recomputation).

``Stack`` and ``RepeatedLayer`` run their layer through ``lax.scan``, so the traced program holds
the layer once however deep the model is: tracing and compiling cost what one layer costs.
"""

from __future__ import annotations

import contextvars
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from luxc.nn import _draws
from luxc.nn._core import AbstractLayer, LayerShapeError, PyTree, _fmt_int, parameter_count

# Direct policies of jax.checkpoint_policies (the others are factories taking names).
POLICY_NAMES = ("nothing_saveable", "everything_saveable", "dots_saveable", "checkpoint_dots",
                "dots_with_no_batch_dims_saveable", "checkpoint_dots_with_no_batch_dims")

# Stack's default policy, chosen when the step is traced from the precision the block runs in:
#
# - float32: "dots_saveable", keep the matmul and convolution outputs of each block, recompute
#   the elementwise rest in the backward pass. Without a policy, lax.scan's backward reads every
#   residual of the forward from a stacked (n, ...) buffer (zero-filled, written by
#   dynamic-update-slice, read by dynamic-slice), where an unrolled program lets XLA fuse the
#   cheap elementwise producers into their backward consumers instead. On the 12-block
#   transformer of benchmarks/depth.py that is 37.6 MiB of residuals a block (the MLP's
#   tanh-GELU alone keeps five (8, 128, 1024) tensors) against 7.6 MiB with this policy, and
#   32.9 against 23.2 ms a block; "nothing_saveable" was 1.07x slower (Intel Xeon, 2026-12-07).
# - bfloat16/float16 (mixed precision, or a half-precision model): "nothing_saveable", keep only
#   each block's input and run its forward pass again in the backward loop. Half-precision
#   products are ~3x cheaper than float32 ones, and the kept outputs cost more than they save:
#   each is converted, written into its stacked buffer and read back. The same 12 blocks with
#   mixed_precision="bf16", interleaved in one process: 262.4 -> 209.3 ms (0.80x); 4 blocks
#   0.83x, 1 block 0.90x (benchmarks/README.md, "Levers").
AUTO_REMAT = "auto"
DEFAULT_STACK_REMAT = AUTO_REMAT
_AUTO_POLICIES = {"full": "dots_saveable", "half": "nothing_saveable"}


def checkpoint_policy(policy: str | Callable) -> Callable:
    """The ``jax.checkpoint`` policy named ``policy`` (a ``jax.checkpoint_policies`` name), or
    ``policy`` itself when it is a callable.

    >>> checkpoint_policy("nothing_saveable") is jax.checkpoint_policies.nothing_saveable
    True
    """
    if callable(policy):
        return policy
    if isinstance(policy, str) and policy in POLICY_NAMES:
        return getattr(jax.checkpoint_policies, policy)
    raise ValueError(f"remat policy must be one of {', '.join(POLICY_NAMES)} or a "
                     f"jax.checkpoint_policies callable; received {policy!r}")


def _rematted(call: Callable, policy: str | Callable | None) -> Callable:
    if policy is None:
        return call
    # prevent_cse=False: inside lax.scan the loop already keeps XLA from merging the
    # recomputation with the forward pass (jax.checkpoint's documentation).
    return jax.checkpoint(call, policy=checkpoint_policy(policy), prevent_cse=False)


class Remat(AbstractLayer):
    """``layer`` whose activations are recomputed in the backward pass (``jax.checkpoint``).

    Same ``ps``/``st`` as ``layer``, same values and gradients; the backward pass keeps only what
    ``policy`` saves (``"nothing_saveable"``: only the layer's inputs), so peak memory drops at
    the price of one more forward pass of the layer.

    Args:
        layer: any luxc layer.
        policy: a name from ``jax.checkpoint_policies`` (one of ``POLICY_NAMES``) or a policy
            callable such as ``jax.checkpoint_policies.save_only_these_names("x")``.

    >>> import jax, luxc
    >>> m = luxc.nn.Remat(luxc.nn.Dense(3, 2))
    >>> ps, st = luxc.setup(0, m)
    >>> m(jax.numpy.ones((4, 3)), ps, st)[0].shape
    (4, 2)
    """

    def __init__(self, layer: AbstractLayer, policy: str | Callable = "nothing_saveable"):
        if not isinstance(layer, AbstractLayer):
            raise TypeError(f"Remat expects a luxc layer; received {type(layer).__name__}")
        checkpoint_policy(policy)
        self.layer, self.policy = layer, policy

    def init_parameters(self, key: jax.Array) -> dict:
        return self.layer.init_parameters(key)

    def init_states(self, key: jax.Array) -> dict:
        return self.layer.init_states(key)

    def __call__(self, x: Any, ps: dict, st: dict) -> tuple[Any, dict]:
        return _rematted(self.layer.__call__, self.policy)(x, ps, st)

    def summary(self) -> str:
        name = self.policy if isinstance(self.policy, str) else "custom"
        return f"Remat({self.layer.summary()}, {name})"


# Leaves Stack created, id -> (leaf, number of stacked leading axes); the leaf is kept so that
# its id is not reused while stacked_axes runs.
_MARKS: contextvars.ContextVar[dict | None] = contextvars.ContextVar("luxc_stack_marks",
                                                                    default=None)


def _stack_trees(trees: list[PyTree]) -> PyTree:
    marks = _MARKS.get()
    out = jax.tree.map(lambda *xs: jnp.stack(xs), *trees)
    if marks is not None:
        for new, old in zip(jax.tree.leaves(out), jax.tree.leaves(trees[0])):
            marks[id(new)] = (new, 1 + marks.get(id(old), (None, 0))[1])
    return out


def stacked_axes(layer: AbstractLayer) -> PyTree:
    """A tree like ``ps`` of ``layer`` holding, for every leaf, how many of its leading axes are
    axes of a :class:`Stack` (0 for an ordinary parameter). Nothing is drawn (shapes only).

    ``luxc.distributed.shard(..., strategy="fsdp")`` never splits those axes: every device runs
    every layer of the stack, so each needs its slice of every layer.

    >>> import luxc
    >>> stacked_axes(luxc.nn.Chain(luxc.nn.Dense(2, 2), Stack(luxc.nn.Dense(2, 2), 3)))
    {'layer_1': {'bias': 0, 'weight': 0}, 'layer_2': {'bias': 1, 'weight': 1}}
    """
    found: list[PyTree] = []

    def init(key: jax.Array) -> PyTree:
        marks: dict = {}
        token = _MARKS.set(marks)
        try:
            ps = layer.init_parameters(key)
        finally:
            _MARKS.reset(token)
        found.append(jax.tree.map(lambda leaf: marks.get(id(leaf), (None, 0))[1], ps))
        return ps

    jax.eval_shape(init, jax.random.key(0))
    return found[0]


def auto_remat(ps: PyTree, x: Any) -> str:
    """The policy ``Stack(remat="auto")`` uses for a block called with parameters ``ps`` on
    ``x``: ``"nothing_saveable"`` when the block's largest floating-point parameter (with none,
    its first floating-point input) is 16-bit (bfloat16, float16), else ``"dots_saveable"``
    (see ``DEFAULT_STACK_REMAT``'s comment). Parameters are compared by their sizes, which are
    known when a step is exported for any batch size; the input's is not.

    >>> import jax.numpy as jnp
    >>> auto_remat({"w": jnp.ones((4, 4), jnp.bfloat16)}, jnp.ones(4)), auto_remat({}, jnp.ones(4))
    ('nothing_saveable', 'dots_saveable')
    """
    def floating(tree: PyTree) -> list:
        return [a for a in jax.tree.leaves(tree)
                if jnp.issubdtype(jnp.result_type(a), jnp.floating)]

    params = floating(ps)
    chosen = (max(params, key=lambda a: math.prod(a.shape)) if params
              else next(iter(floating(x)), None))
    half = chosen is not None and jnp.result_type(chosen).itemsize <= 2
    return _AUTO_POLICIES["half" if half else "full"]


def _check_n(what: str, n: Any) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"{what} must be a positive int; received {n!r}")


def _same_shape(layer: AbstractLayer, x: Any, y: Any, what: str) -> None:
    sx, sy = jax.tree.map(jnp.shape, x), jax.tree.map(jnp.shape, y)
    dx, dy = jax.tree.map(jnp.result_type, x), jax.tree.map(jnp.result_type, y)
    if jax.tree.structure(x) != jax.tree.structure(y) or sx != sy or dx != dy:
        raise LayerShapeError(
            f"{what}({layer.summary()}) needs a layer whose output has its input's shape and "
            f"dtype; input {sx} {dx}, output {sy} {dy}")


class Stack(AbstractLayer):
    """``n`` layers with the structure of ``layer``, each with its own parameters, applied in
    order through ``lax.scan``: the traced module holds ``layer`` once whatever ``n``.

    ``ps`` and ``st`` are those of ``layer`` with every leaf stacked along a new leading axis
    of size ``n``: a ``Dense(4, 4)`` stacked 12 times has ``ps["weight"]`` of shape
    ``(12, 4, 4)``; slice ``i`` (``jax.tree.map(lambda a: a[i], ps)``) is layer ``i``'s, drawn
    from ``jax.random.split(key, n)[i]`` exactly as ``Chain(layer, ..., layer)`` draws its
    ``layer_{i+1}``. ``layer`` must map an input to an output of the same shape and dtype
    (a residual block, say); its state must keep its structure.

    Args:
        layer: the block.
        n: the number of blocks (≥ 1).
        remat: a ``jax.checkpoint_policies`` name or callable saying which of each block's
            activations the backward pass keeps (the rest is recomputed, see :class:`Remat`);
            ``"nothing_saveable"`` keeps only each block's input (least memory); ``None`` keeps
            every residual (``lax.scan`` alone). The default ``"auto"`` chooses by the
            precision the block runs in (its largest floating-point parameter): in float32
            ``"dots_saveable"``, the matmul and convolution outputs kept and the elementwise
            rest recomputed (faster than keeping everything, because a scan materialises every
            kept residual as an ``(n, ...)`` buffer); in bfloat16 or float16
            ``"nothing_saveable"`` (the products are cheap to run again; their kept outputs
            were not).

    A compiled training step on CPU keeps those ``(n, ...)`` buffers (n ≥ 2) between calls
    instead of zero-filling fresh ones every step (docs/guide/host-memory.md): their memory
    stays allocated while the step is cached.

    >>> import jax, luxc
    >>> m = Stack(luxc.nn.Dense(4, 4, jax.nn.tanh), 12)
    >>> ps, st = luxc.setup(0, m)
    >>> ps["weight"].shape, luxc.parameter_count(m)
    ((12, 4, 4), 240)
    >>> m(jax.numpy.ones((2, 4)), ps, st)[0].shape
    (2, 4)
    """

    def __init__(self, layer: AbstractLayer, n: int, *,
                 remat: str | Callable | None = DEFAULT_STACK_REMAT):
        if not isinstance(layer, AbstractLayer):
            raise TypeError(f"Stack expects a luxc layer; received {type(layer).__name__}")
        _check_n("Stack: n", n)
        if remat is not None and remat != AUTO_REMAT:
            try:
                checkpoint_policy(remat)
            except ValueError as e:
                raise ValueError(f"Stack: {e}, or \"auto\" (the default)") from None
        self.layer, self.n, self.remat = layer, n, remat

    def _stacked(self, init: Callable, key: jax.Array) -> PyTree:
        return _stack_trees([init(k) for k in _draws.split(key, self.n)])

    def init_parameters(self, key: jax.Array) -> dict:
        return self._stacked(self.layer.init_parameters, key)

    def init_states(self, key: jax.Array) -> dict:
        return self._stacked(self.layer.init_states, key)

    def __call__(self, x: Any, ps: dict, st: dict) -> tuple[Any, dict]:
        def block(h: Any, p: dict, s: dict) -> tuple[Any, dict]:
            y, s = self.layer(h, p, s)
            _same_shape(self.layer, h, y, "Stack")
            return y, s

        policy = auto_remat(ps, x) if self.remat == AUTO_REMAT else self.remat
        step = _rematted(block, policy)
        return lax.scan(lambda h, ps_st: step(h, *ps_st), x, (ps, st), length=self.n)

    def summary(self) -> str:
        extra = "" if self.remat == DEFAULT_STACK_REMAT else f", remat={_policy_name(self.remat)}"
        return f"Stack({self.n} × {self.layer.summary()}{extra})"

    def _render_lines(self, indent: int) -> list[tuple[str, str]]:
        each = parameter_count(self.layer)
        note = f"{self.n} × {_fmt_int(each)} parameters" if each else ""
        return [("    " * indent + self.summary(), note)]


def _policy_name(policy: str | Callable | None) -> str:
    if policy is None or isinstance(policy, str):
        return str(policy)
    return getattr(policy, "__name__", "custom")


class RepeatedLayer(AbstractLayer):
    """Lux's ``RepeatedLayer``: ONE set of parameters applied ``repeats`` times, through
    ``lax.scan``.

    As Lux's ``RepeatedLayer`` (``src/layers/containers.jl``): ``ps``/``st`` are the layer's
    (no wrapper key); without ``input_injection`` ``y = layer(...layer(layer(x)))``; with it the
    input is fed to every repetition, ``h₁ = layer((x, x))``, ``hᵢ₊₁ = layer((hᵢ, x))``: the layer
    takes the tuple ``(h, x)``. The state is threaded from one repetition to the next.

    Args:
        layer: the repeated layer; its output must have its input's shape and dtype (with
            ``input_injection``, the shape of ``x``).
        repeats: how many times (≥ 1).
        input_injection: feed ``(h, x)`` to each repetition instead of ``h``.

    >>> import jax, luxc
    >>> m = RepeatedLayer(luxc.nn.Dense(3, 3, jax.nn.tanh), 4)
    >>> ps, st = luxc.setup(0, m)
    >>> ps["weight"].shape
    (3, 3)
    """

    def __init__(self, layer: AbstractLayer, repeats: int, *, input_injection: bool = False):
        if not isinstance(layer, AbstractLayer):
            raise TypeError(f"RepeatedLayer expects a luxc layer; received {type(layer).__name__}")
        _check_n("RepeatedLayer: repeats", repeats)
        self.layer, self.repeats, self.input_injection = layer, repeats, bool(input_injection)

    def init_parameters(self, key: jax.Array) -> dict:
        return self.layer.init_parameters(key)

    def init_states(self, key: jax.Array) -> dict:
        return self.layer.init_states(key)

    def __call__(self, x: Any, ps: dict, st: dict) -> tuple[Any, dict]:
        def once(h_s: tuple[Any, dict], _: None) -> tuple[tuple[Any, dict], None]:
            h, s = h_s
            y, s = self.layer((h, x) if self.input_injection else h, ps, s)
            _same_shape(self.layer, h, y, "RepeatedLayer")
            return (y, s), None

        (y, st), _ = lax.scan(once, (x, st), None, length=self.repeats)
        return y, st

    def summary(self) -> str:
        # Lux's display_name (src/layers/containers.jl).
        ij = "true" if self.input_injection else "false"
        return (f"RepeatedLayer{{nrepeats = {self.repeats}, input_injection = {ij}}}"
                f"({self.layer.summary()})")

    def _render_lines(self, indent: int) -> list[tuple[str, str]]:
        n = parameter_count(self.layer)
        return [("    " * indent + self.summary(), f"{_fmt_int(n)} parameters" if n else "")]
