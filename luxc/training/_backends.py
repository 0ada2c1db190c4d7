"""AD backends, the role ADTypes.jl plays in Lux."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AutoJAX:
    """Reverse mode (``jax.value_and_grad``) run op by op, without compiling the step: the
    Zygote analogue, for debugging (print, breakpoints and Python control flow work)."""


@dataclass(frozen=True)
class AutoForwardDiff:
    """Forward mode (``jax.jacfwd`` over the flattened parameters): one JVP per parameter
    scalar, so only for small models, as ForwardDiff in Lux."""


@dataclass(frozen=True)
class AutoXLA:
    """The compiled path, Lux's Reactant backend: objective, gradient and optimiser update
    traced into one StableHLO module, rewritten by luxc's passes, compiled by XLA and cached
    in ``TrainState.cache``."""


SUPPORTED = (AutoJAX, AutoForwardDiff, AutoXLA)


def check_backend(ad: object, fn: str) -> None:
    if not isinstance(ad, SUPPORTED):
        names = ", ".join(f"luxc.{b.__name__}()" for b in SUPPORTED)
        raise TypeError(f"{fn}: unsupported AD backend {ad!r}; supported backends are {names}")
