r"""Running a recurrent cell over a sequence: ``Recurrence``, ``StatefulRecurrentCell``,
``BidirectionalRNN`` and ``ReverseSequence`` (Lux's ``src/layers/recurrent.jl``, ``basic.jl``).

A sequence is batch-first, ``(batch, time, features)`` with ``BatchLastIndex()`` (Lux's default,
Julia's ``(features, time, batch)``), or ``(time, batch, features)`` with ``TimeLastIndex()``;
``(time, features)`` is one unbatched sequence in either ordering, and a list or tuple of
``(batch, features)`` arrays is one step per element, as in Lux.

Lux unrolls the time loop; luxc runs it as ONE ``lax.scan``: the cell is traced once, so the
traced module (and XLA's compile time) does not grow with the number of steps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from luxc.nn._core import AbstractContainerLayer, AbstractLayer, LayerShapeError, _fmt_int, parameter_count
from luxc.nn._recurrent_cells import AbstractRecurrentCell
from luxc.ops import BatchLastIndex, TimeLastIndex

Ordering = BatchLastIndex | TimeLastIndex
BATCH_LAST = BatchLastIndex()  # the default ordering, Lux's


def _check_cell(owner: str, name: str, cell: Any) -> AbstractRecurrentCell:
    if not isinstance(cell, AbstractRecurrentCell):
        raise TypeError(f"{owner}: {name} must be a recurrent cell (RNNCell, LSTMCell, GRUCell, "
                        f"...); received {type(cell).__name__}")
    return cell


def _check_ordering(owner: str, ordering: Any) -> Ordering:
    if isinstance(ordering, type) and ordering in (BatchLastIndex, TimeLastIndex):
        ordering = ordering()
    if not isinstance(ordering, BatchLastIndex | TimeLastIndex):
        raise ValueError(f"{owner}: ordering must be BatchLastIndex() or TimeLastIndex(); "
                         f"received {ordering!r}")
    return ordering


def _cell_lines(name: str, cell: AbstractLayer, indent: int) -> tuple[str, str]:
    n = parameter_count(cell)
    return f"{'    ' * indent}    {name} = {cell.summary()},", f"{_fmt_int(n)} parameters" if n else ""


class Recurrence(AbstractLayer):
    r"""Lux's ``Recurrence``: ``cell`` applied along the time axis, from its initial carry.

    .. math::
        (y_1, c_1) = \mathrm{cell}(x_1), \quad (y_t, c_t) = \mathrm{cell}((x_t, c_{t-1}))

    Returns :math:`y_T` ``(batch, out)``, or with ``return_sequence=True`` every :math:`y_t`
    stacked along the input's time axis: ``(batch, time, out)`` (``BatchLastIndex()``) or
    ``(time, batch, out)`` (``TimeLastIndex()``); a list/tuple input gives a list/tuple, as Lux.
    ``ps``/``st`` are the cell's (Lux's wrapper layer adds no level).

    Args:
        cell: an :class:`RNNCell`, :class:`LSTMCell` or :class:`GRUCell`.
        ordering: ``BatchLastIndex()`` (default) or ``TimeLastIndex()``, from ``luxc.ops``.
        return_sequence: return every step's output instead of the last.

    >>> import jax, jax.numpy as jnp, luxc
    >>> rnn = luxc.nn.Recurrence(luxc.nn.LSTMCell(3, 5), return_sequence=True)
    >>> ps, st = luxc.setup(0, rnn)
    >>> rnn(jnp.ones((2, 7, 3)), ps, st)[0].shape
    (2, 7, 5)
    """

    def __init__(self, cell: AbstractRecurrentCell, *, ordering: Ordering = BATCH_LAST,
                 return_sequence: bool = False):
        self.cell = _check_cell("Recurrence", "cell", cell)
        self.ordering = _check_ordering("Recurrence", ordering)
        self.return_sequence = bool(return_sequence)

    def init_parameters(self, key: jax.Array) -> dict:
        return self.cell.init_parameters(key)

    def init_states(self, key: jax.Array) -> dict:
        return self.cell.init_states(key)

    def _time_major(self, x: Any) -> tuple[jax.Array, bool]:
        """``x`` as ``(time, batch, features)``, and whether it was unbatched."""
        if isinstance(x, list | tuple):
            if not x:
                raise LayerShapeError(f"{self.summary()}: received an empty sequence")
            xs = jnp.stack([jnp.asarray(xi) for xi in x])
            return (xs[:, None], True) if xs.ndim == 2 else (xs, False)
        x = jnp.asarray(x)
        if x.ndim == 2:
            return x[:, None], True
        if x.ndim != 3:
            layout = ("(batch, time, features)" if isinstance(self.ordering, BatchLastIndex)
                      else "(time, batch, features)")
            raise LayerShapeError(f"{self.summary()} expects {layout} or (time, features); "
                                  f"received an input of shape {x.shape}")
        return (jnp.swapaxes(x, 0, 1) if isinstance(self.ordering, BatchLastIndex) else x), False

    def __call__(self, x: Any, ps: dict, st: dict) -> tuple[Any, dict]:
        xs, unbatched = self._time_major(x)
        if xs.shape[0] == 0:
            raise LayerShapeError(f"{self.summary()}: received a sequence of 0 time steps "
                                  f"(input shape {jnp.shape(x)}); give at least one")
        cell = self.cell
        carry, st = cell.initial_carry(xs[0], ps, st)
        (y_shape, _), _ = jax.eval_shape(cell, (xs[0], carry), ps, st)

        def step(acc: tuple, xt: jax.Array) -> tuple[tuple, jax.Array | None]:
            c, s, _ = acc
            (y, c2), s = cell((xt, c), ps, s)
            # A carry keeps its dtype from step to step (lax.scan requires it).
            c2 = tuple(a.astype(b.dtype) for a, b in zip(c2, c))
            return (c2, s, y), (y if self.return_sequence else None)

        y0 = jnp.zeros(y_shape.shape, y_shape.dtype)
        (_, st, y_last), ys = lax.scan(step, (carry, st, y0), xs)
        if not self.return_sequence:
            return (y_last[0] if unbatched else y_last), st
        ys = ys[:, 0] if unbatched else ys
        if isinstance(x, list | tuple):
            return type(x)(ys[t] for t in range(ys.shape[0])), st
        if not unbatched and isinstance(self.ordering, BatchLastIndex):
            return jnp.swapaxes(ys, 0, 1), st
        return ys, st

    def summary(self) -> str:
        extra = ", return_sequence=true" if self.return_sequence else ""
        extra += ", ordering=TimeLastIndex()" if isinstance(self.ordering, TimeLastIndex) else ""
        return f"Recurrence({self.cell.summary()}{extra})"

    def _render_lines(self, indent: int) -> list[tuple[str, str]]:
        pad = "    " * indent
        return [(pad + "Recurrence(", ""), _cell_lines("cell", self.cell, indent), (pad + ")", "")]


class StatefulRecurrentCell(AbstractLayer):
    """Lux's ``StatefulRecurrentCell``: a cell that keeps its carry in the state between calls.

    ``y, st = layer(x, ps, st)`` is one step: from the cell's initial carry while
    ``st["carry"]`` is ``None``, from ``st["carry"]`` afterwards; the new carry is stored back.
    Reset it between sequences with ``luxc.nn.update_state(st, "carry", None)``. ``ps`` is the
    cell's; ``st`` is ``{"cell": cell's state, "carry": None | tuple}``.

    >>> import jax, jax.numpy as jnp, luxc
    >>> layer = luxc.nn.StatefulRecurrentCell(luxc.nn.GRUCell(3, 4))
    >>> ps, st = luxc.setup(0, layer)
    >>> y, st = layer(jnp.ones((2, 3)), ps, st)
    >>> st["carry"][0].shape
    (2, 4)
    """

    def __init__(self, cell: AbstractRecurrentCell):
        self.cell = _check_cell("StatefulRecurrentCell", "cell", cell)

    def init_parameters(self, key: jax.Array) -> dict:
        return self.cell.init_parameters(key)

    def init_states(self, key: jax.Array) -> dict:
        return {"cell": self.cell.init_states(key), "carry": None}

    def __call__(self, x: Any, ps: dict, st: dict) -> tuple[jax.Array, dict]:
        carry = st["carry"]
        (y, carry), cell_st = self.cell(x if carry is None else (x, carry), ps, st["cell"])
        return y, {"cell": cell_st, "carry": carry}

    def summary(self) -> str:
        return f"StatefulRecurrentCell({self.cell.summary()})"

    def _render_lines(self, indent: int) -> list[tuple[str, str]]:
        pad = "    " * indent
        return [(pad + "StatefulRecurrentCell(", ""), _cell_lines("cell", self.cell, indent),
                (pad + ")", "")]


class ReverseSequence(AbstractLayer):
    """Lux's ``ReverseSequence``: ``x`` reversed along axis ``dim``; no parameters.

    ``dim`` is an axis of luxc's row-major layout (negative counts from the end). ``dim=None``
    is Lux's default translated: axis 1 (the time axis of ``(batch, time, features)``) for an
    array of two or more axes, the array itself for a vector; a list or tuple is reversed as a
    sequence.

    >>> import jax.numpy as jnp, luxc
    >>> luxc.nn.ReverseSequence()(jnp.array([1.0, 2.0, 3.0]), {}, {})[0]
    Array([3., 2., 1.], dtype=float32)
    """

    def __init__(self, dim: int | None = None):
        if dim is not None and (not isinstance(dim, int) or isinstance(dim, bool)):
            raise ValueError(f"ReverseSequence: dim must be an int axis or None; received {dim!r}")
        self.dim = dim

    def __call__(self, x: Any, ps: dict, st: dict) -> tuple[Any, dict]:
        if isinstance(x, list | tuple):
            return type(x)(reversed(x)), st
        x = jnp.asarray(x)
        axis = (1 if x.ndim >= 2 else 0) if self.dim is None else self.dim
        if not -x.ndim <= axis < x.ndim:
            raise LayerShapeError(f"{self.summary()}: dim {axis} is not an axis of an input of "
                                  f"shape {x.shape}")
        return jnp.flip(x, axis), st

    def summary(self) -> str:
        return "ReverseSequence()" if self.dim is None else f"ReverseSequence(dim={self.dim})"


def vcat(forward: jax.Array, backward: jax.Array) -> jax.Array:
    """Lux's default ``merge_mode`` (``vcat`` of Julia's feature axis): the features of both
    directions concatenated along the last axis."""
    return jnp.concatenate([forward, backward], axis=-1)


class _Backward(AbstractContainerLayer):
    """Lux's ``Chain(rev1=ReverseSequence(), rnn=..., rev2=ReverseSequence())``."""

    def __init__(self, rnn: Recurrence, axis: int):
        self.layers = {"rev1": ReverseSequence(axis), "rnn": rnn, "rev2": ReverseSequence(axis)}

    def sublayers(self) -> dict[str, AbstractLayer]:
        return self.layers

    def __call__(self, x: Any, ps: dict, st: dict) -> tuple[Any, dict]:
        new_st = {}
        for name, layer in self.layers.items():
            x, new_st[name] = layer(x, ps[name], st[name])
        return x, new_st


class BidirectionalRNN(AbstractContainerLayer):
    r"""Lux's ``BidirectionalRNN``: a forward and a backward ``Recurrence(...,
    return_sequence=True)``; the backward one reads the sequence reversed in time and its
    outputs are reversed back, so step ``t`` of both describes ``x_t``.

    Returns ``merge_mode(y_forward, y_backward)`` over the whole sequences (default
    :func:`vcat`: ``(batch, time, 2·out)``), or the pair ``(y_forward, y_backward)`` when
    ``merge_mode=None``. ``ps``/``st`` as Lux: ``forward_rnn`` (the cell's) and
    ``backward_rnn`` = ``{rev1, rnn, rev2}``; ``backward_cell=None`` uses a copy of ``cell``
    with its own parameters.

    >>> import jax, jax.numpy as jnp, luxc
    >>> bi = luxc.nn.BidirectionalRNN(luxc.nn.RNNCell(3, 5))
    >>> ps, st = luxc.setup(0, bi)
    >>> bi(jnp.ones((2, 4, 3)), ps, st)[0].shape
    (2, 4, 10)
    """

    def __init__(self, cell: AbstractRecurrentCell,
                 backward_cell: AbstractRecurrentCell | None = None, *,
                 merge_mode: Callable[[Any, Any], Any] | None = vcat,
                 ordering: Ordering = BATCH_LAST):
        _check_cell("BidirectionalRNN", "cell", cell)
        if backward_cell is not None:
            _check_cell("BidirectionalRNN", "backward_cell", backward_cell)
        if merge_mode is not None and not callable(merge_mode):
            raise ValueError(f"BidirectionalRNN: merge_mode must be a function of two sequences "
                             f"or None; received {merge_mode!r}")
        ordering = _check_ordering("BidirectionalRNN", ordering)
        # The time axis of (batch, time, ...) and of (time, features) is -2; of (time, batch, ...) 0.
        axis = -2 if isinstance(ordering, BatchLastIndex) else 0
        self.forward = Recurrence(cell, ordering=ordering, return_sequence=True)
        back = Recurrence(backward_cell or cell, ordering=ordering, return_sequence=True)
        self.backward = _Backward(back, axis)
        self.merge_mode, self.ordering = merge_mode, ordering

    def sublayers(self) -> dict[str, AbstractLayer]:
        return {"forward_rnn": self.forward, "backward_rnn": self.backward}

    def __call__(self, x: Any, ps: dict, st: dict) -> tuple[Any, dict]:
        yf, sf = self.forward(x, ps["forward_rnn"], st["forward_rnn"])
        yb, sb = self.backward(x, ps["backward_rnn"], st["backward_rnn"])
        new_st = {"forward_rnn": sf, "backward_rnn": sb}
        if self.merge_mode is None:
            return (yf, yb), new_st
        if isinstance(yf, list | tuple):
            return type(yf)(self.merge_mode(a, b) for a, b in zip(yf, yb)), new_st
        return self.merge_mode(yf, yb), new_st

    def summary(self) -> str:
        merge = getattr(self.merge_mode, "__name__", repr(self.merge_mode))
        return f"BidirectionalRNN({self.forward.cell.summary()}, merge_mode={merge})"

    def _render_lines(self, indent: int) -> list[tuple[str, str]]:
        pad = "    " * indent
        return [(pad + "BidirectionalRNN(", ""),
                _cell_lines("forward_cell", self.forward.cell, indent),
                _cell_lines("backward_cell", self.backward.layers["rnn"].cell, indent),
                (pad + ")", "")]
