"""Models from flax (linen and nnx) and equinox as luxc layers, the role of Lux's
``FromFluxAdaptor``.

An adaptor is an ordinary luxc layer: ``ps, st = luxc.setup(key, layer)``,
``y, st = layer(x, ps, st)``. ``ps`` holds the framework's trainable arrays, ``st["state"]`` its
other arrays (flax collections such as ``batch_stats``, nnx variables, equinox ``State``),
``st["training"]`` the ``Val`` that ``luxc.testmode`` / ``luxc.trainmode`` flip and
``st["rng"]`` the key of a module that draws random numbers (raw key data, so that it survives
checkpoints and export). Every array is copied out of the module, so donating ``ps`` to an
in-place step never frees the arrays of the user's own module.

flax and equinox are optional: they are imported when an adaptor is built.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from luxc.nn._core import AbstractLayer, Val


def _require(package: str, adaptor: str) -> Any:
    try:
        return importlib.import_module(package)
    except ImportError:
        raise ImportError(f"luxc.nn.{adaptor} needs {package}: pip install 'luxc[{package}]' "
                          f"(or pip install {package})") from None


def _copy(tree: Any) -> Any:
    return jax.tree.map(jnp.copy, tree)


def _accepts(fn: Callable, name: str) -> bool:
    return name in inspect.signature(fn).parameters


def _batch_size(x: Any) -> int:
    return jax.tree.leaves(x)[0].shape[0]


def _split_rng(st: dict, n: int) -> tuple[dict, list[jax.Array]]:
    """``n`` fresh keys from ``st["rng"]`` and the state holding the next key."""
    rng, *subs = jax.random.split(jax.random.wrap_key_data(st["rng"]), n + 1)
    return {**st, "rng": jax.random.key_data(rng)}, subs


def _mode_state(state: Any, has_flag: bool, has_rng: bool, key: jax.Array) -> dict:
    st: dict = {"state": state}
    if has_flag:
        st["training"] = Val(True)
    if has_rng:
        st["rng"] = jax.random.key_data(key)
    return st


def _training(st: dict) -> bool:
    return bool(st.get("training", True))


class _KeyCodec:
    """Typed PRNG keys (nnx ``Rngs``) as raw ``uint32`` key data in the state, and back."""

    def __init__(self, tree: Any):
        self.impls = tuple(jax.random.key_impl(x) if _is_key(x) else None
                           for x in jax.tree.leaves(tree))

    def encode(self, tree: Any) -> Any:
        leaves, treedef = jax.tree.flatten(tree)
        return treedef.unflatten([jax.random.key_data(x) if impl else x
                                  for x, impl in zip(leaves, self.impls)])

    def decode(self, tree: Any) -> Any:
        leaves, treedef = jax.tree.flatten(tree)
        return treedef.unflatten([jax.random.wrap_key_data(x, impl=impl) if impl else x
                                  for x, impl in zip(leaves, self.impls)])


def _is_key(x: Any) -> bool:
    return jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key)


class _Linen:
    """A linen module: ``params`` → parameters, the other collections → state; a ``train`` /
    ``training`` / ``deterministic`` argument of ``__call__`` follows ``st["training"]``."""

    def __init__(self, flax: Any, module: Any, sample_input: Any, rngs: Sequence[str]):
        self.module, self.sample_input, self.rngs = module, sample_input, tuple(rngs)
        names = inspect.signature(module.__call__).parameters
        self.flag = next((n for n in ("train", "training", "deterministic") if n in names), None)
        shapes = jax.eval_shape(self._init, jax.random.key(0))
        self.collections = tuple(c for c in shapes if c != "params")
        self.has_rng = self._draws_random(flax, shapes)

    def _flags(self, training: bool) -> dict:
        if self.flag is None:
            return {}
        return {self.flag: (not training) if self.flag == "deterministic" else training}

    def _init(self, key: jax.Array) -> dict:
        return dict(self.module.init({"params": key}, self.sample_input, **self._flags(False)))

    def _draws_random(self, flax: Any, variables: dict) -> bool:
        def run(variables, rngs):
            return self.module.apply(variables, self.sample_input, rngs=rngs,
                                     mutable=list(self.collections), **self._flags(True))

        try:
            jax.eval_shape(run, variables, None)
            return False
        except flax.errors.InvalidRngError:
            try:
                jax.eval_shape(run, variables, dict.fromkeys(self.rngs, jax.random.key(0)))
            except flax.errors.InvalidRngError as e:
                raise ValueError(f"FromFlax: the module draws random numbers from a stream not in "
                                 f"rngs={self.rngs}; pass every stream's name ({e})") from None
            return True

    def init_parameters(self, key: jax.Array) -> dict:
        return dict(self._init(key).get("params", {}))

    def init_states(self, key: jax.Array) -> dict:
        variables = self._init(key)
        state = {c: variables[c] for c in self.collections}
        return _mode_state(state, self.flag is not None, self.has_rng, key)

    def __call__(self, x: Any, ps: dict, st: dict) -> tuple[Any, dict]:
        training = _training(st)
        rngs = None
        if self.has_rng and (training or self.flag is None):
            st, subs = _split_rng(st, len(self.rngs))
            rngs = dict(zip(self.rngs, subs))
        y, mutated = self.module.apply({"params": ps, **st["state"]}, x, rngs=rngs,
                                       mutable=list(self.collections), **self._flags(training))
        return y, {**st, "state": {**st["state"], **mutated}}


class _Nnx:
    """An nnx module: ``nnx.Param`` variables → parameters, every other variable → state;
    ``st["training"]`` selects the module as after ``.train()`` or ``.eval()``."""

    def __init__(self, nnx: Any, module: Any):
        self.nnx = nnx
        modes = {}
        for training in (True, False):
            view = nnx.view(module, deterministic=not training, use_running_average=not training,
                            raise_if_not_found=False)
            modes[training] = nnx.split(view, nnx.Param, ...)
        self.graphdefs = {t: graphdef for t, (graphdef, _, _) in modes.items()}
        _, params, rest = modes[True]
        self.params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)
        self.codec = _KeyCodec(rest)
        self.rest = self.codec.encode(rest)
        self.has_flag = self.graphdefs[True] != self.graphdefs[False]

    def init_parameters(self, key: jax.Array) -> dict:
        return _copy(self.params)

    def init_states(self, key: jax.Array) -> dict:
        return _mode_state(_copy(self.rest), self.has_flag, False, key)

    def __call__(self, x: Any, ps: dict, st: dict) -> tuple[Any, dict]:
        nnx = self.nnx
        model = nnx.merge(self.graphdefs[_training(st)], ps, self.codec.decode(st["state"]))
        y = model(x)
        _, _, rest = nnx.split(model, nnx.Param, ...)
        return y, {**st, "state": self.codec.encode(nnx.to_pure_dict(rest))}


class FromFlax(AbstractLayer):
    """A flax module (linen or nnx) as a luxc layer.

    * linen: ``module.init`` draws the parameters from ``setup``'s key; ``params`` → ``ps``,
      every other collection (e.g. ``batch_stats``) → ``st["state"]``. If ``__call__`` takes
      ``train``, ``training`` or ``deterministic``, it follows ``st["training"]``
      (``deterministic = not training``), and the mutable collections are updated.
      A module that draws random numbers (``self.make_rng``) gets a key in ``st["rng"]``,
      split on each training call into one key per stream of ``rngs``.
    * nnx: ``nnx.split`` separates ``nnx.Param`` (→ ``ps``) from the other variables
      (→ ``st["state"]``, nnx's own ``Rngs`` counters included); the module's current
      values are the initial ones (``setup``'s key is not used). ``st["training"]`` selects
      the module as after ``.train()`` (``Val(True)``) or ``.eval()``.

    Parameters count as in flax: every array of ``params`` (linen) or every ``nnx.Param``.

    Args:
        module: a ``flax.linen.Module`` or a ``flax.nnx.Module``.
        sample_input: an input of the shape the module takes (linen only; it sizes the
            parameters, as ``module.init`` needs).
        rngs: names of the random streams a linen module draws from when training.

    >>> import jax, jax.numpy as jnp, flax.linen, luxc
    >>> layer = luxc.nn.FromFlax(flax.linen.Dense(3), jnp.ones((1, 4)))
    >>> ps, st = luxc.setup(jax.random.key(0), layer)
    >>> luxc.parameter_count(layer), layer(jnp.ones((2, 4)), ps, st)[0].shape
    (15, (2, 3))
    """

    def __init__(self, module: Any, sample_input: Any = None, *, rngs: Sequence[str] = ("dropout",)):
        flax = _require("flax", "FromFlax")
        nnx, linen = importlib.import_module("flax.nnx"), importlib.import_module("flax.linen")
        if isinstance(module, nnx.Module):
            self.impl: _Linen | _Nnx = _Nnx(nnx, module)
        elif isinstance(module, linen.Module):
            if sample_input is None:
                raise TypeError("FromFlax: a linen module needs sample_input, an input of the "
                                "shape it takes (module.init sizes the parameters from it)")
            self.impl = _Linen(flax, module, sample_input, rngs)
        else:
            raise TypeError(f"FromFlax expects a flax.linen.Module or a flax.nnx.Module; "
                            f"received {type(module).__name__}")
        self.name = type(module).__name__

    def init_parameters(self, key: jax.Array) -> dict:
        return self.impl.init_parameters(key)

    def init_states(self, key: jax.Array) -> dict:
        return self.impl.init_states(key)

    def __call__(self, x: Any, ps: dict, st: dict) -> tuple[Any, dict]:
        return self.impl(x, ps, st)

    def summary(self) -> str:
        return f"FromFlax({self.name})"


class FromEquinox(AbstractLayer):
    """An equinox module as a luxc layer.

    ``eqx.partition(module, eqx.is_inexact_array)`` splits it: the floating-point arrays are
    the parameters (``ps``, a flat ``dict`` named by their path, e.g. ``"layers[0].weight"``),
    everything else stays in the layer, static. An equinox ``State`` (from
    ``eqx.nn.make_with_state``) goes into ``st["state"]``. ``st["training"]`` sets
    ``eqx.nn.inference_mode`` (``inference = not training``) when the module has such layers
    (Dropout, BatchNorm); if ``__call__`` takes ``key``, a key kept in ``st["rng"]`` is split
    on every training call (``key=None`` in test mode). The module's current values are the
    initial ones (``setup``'s key is not used). Parameters count as in equinox: every inexact
    array leaf.

    Equinox modules act on one sample; with ``vmap=True`` (default) the layer maps the module
    over the batch axis (axis name ``axis_name``, the one ``eqx.nn.BatchNorm`` averages over).

    Args:
        module: an ``equinox.Module``.
        state: its ``eqx.nn.State``, if it has one; the module is then called as
            ``module(x, state) -> (y, state)``.
        vmap: map the module over the leading (batch) axis of ``x``.
        axis_name: the name of the mapped axis.

    >>> import jax, jax.numpy as jnp, equinox as eqx, luxc
    >>> layer = luxc.nn.FromEquinox(eqx.nn.Linear(4, 3, key=jax.random.key(0)))
    >>> ps, st = luxc.setup(jax.random.key(0), layer)
    >>> luxc.parameter_count(layer), layer(jnp.ones((2, 4)), ps, st)[0].shape
    (15, (2, 3))
    """

    def __init__(self, module: Any, state: Any = None, *, vmap: bool = True,
                 axis_name: str = "batch"):
        eqx = _require("equinox", "FromEquinox")
        if not isinstance(module, eqx.Module):
            raise TypeError(f"FromEquinox expects an equinox.Module; received {type(module).__name__}")
        if state is not None and not isinstance(state, eqx.nn.State):
            raise TypeError(f"FromEquinox: state must be an eqx.nn.State (from "
                            f"eqx.nn.make_with_state); received {type(state).__name__}")
        self.eqx, self.vmap, self.axis_name = eqx, vmap, axis_name
        params, self.static = eqx.partition(module, eqx.is_inexact_array)
        flat, self.treedef = jax.tree_util.tree_flatten_with_path(params)
        self.params = {jax.tree_util.keystr(path).lstrip("."): x for path, x in flat}
        self.state_leaves, self.state_treedef = jax.tree.flatten(state)
        modes = [eqx.partition(eqx.nn.inference_mode(module, v), eqx.is_inexact_array)[1]
                 for v in (True, False)]
        self.has_flag = not eqx.tree_equal(*modes)
        self.has_rng = _accepts(type(module).__call__, "key")
        self.name = type(module).__name__

    def init_parameters(self, key: jax.Array) -> dict:
        return _copy(self.params)

    def init_states(self, key: jax.Array) -> dict:
        return _mode_state(_copy(self.state_leaves), self.has_flag, self.has_rng, key)

    def _module(self, ps: dict, training: bool) -> Any:
        params = self.treedef.unflatten([ps[name] for name in self.params])
        module = self.eqx.combine(params, self.static)
        return self.eqx.nn.inference_mode(module, not training) if self.has_flag else module

    def __call__(self, x: Any, ps: dict, st: dict) -> tuple[Any, dict]:
        training = _training(st)
        module = self._module(ps, training)
        stateful = self.state_treedef.num_leaves > 0
        state = self.state_treedef.unflatten(st["state"]) if stateful else None
        # As luxc's Dropout: a test-mode call draws nothing and leaves the key alone.
        draws = self.has_rng and (training or not self.has_flag)
        keys = None
        if draws:
            st, (key,) = _split_rng(st, 1)
            keys = jax.random.split(key, _batch_size(x)) if self.vmap else key

        def call(x, state, key):
            kwargs = {"key": key} if self.has_rng else {}
            return module(x, state, **kwargs) if stateful else (module(x, **kwargs), state)

        if self.vmap:
            call = jax.vmap(call, in_axes=(0, None, 0 if draws else None),
                            out_axes=(0, None), axis_name=self.axis_name)
        y, state = call(x, state, keys)
        return y, ({**st, "state": jax.tree.leaves(state)} if stateful else st)

    def summary(self) -> str:
        return f"FromEquinox({self.name})"
