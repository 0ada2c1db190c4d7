"""luxc's preferences (Lux's Preferences.jl role), read once per process.

| name | values | default | what it controls |
|---|---|---|---|
| ``eltype_mismatch_handling`` | ``none`` ``warn`` ``convert`` ``error`` | ``none`` | ``match_eltype`` |
| ``recompile_check`` | ``none`` ``warn`` ``error`` | ``none`` | a recompile of a cached step |
| ``instability_check_luxcore`` | ``disable`` ``warn`` ``error`` | ``disable`` | every layer's output dtype |
| ``instability_check_luxlib`` | ``disable`` ``warn`` ``error`` | ``disable`` | every loss's output dtype |
| ``chain_loop`` | ``auto`` ``never`` | ``auto`` | a ``Chain``'s long repeated runs as loops |

Each is read from the environment variable ``LUXC_<NAME>`` (upper case), else from the
``[preferences]`` table of ``$LUXC_CONFIG`` or ``~/.config/luxc/config.toml``, else the default.
``set_preferences(**prefs)`` changes them for the running process;
``set_dispatch_doctor_preferences`` sets the two ``instability_check`` ones.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

_ALLOWED = {
    "eltype_mismatch_handling": ("none", "warn", "convert", "error"),
    "recompile_check": ("none", "warn", "error"),
    "instability_check_luxcore": ("disable", "warn", "error"),
    "instability_check_luxlib": ("disable", "warn", "error"),
    "chain_loop": ("auto", "never"),
}
_values: dict[str, str] | None = None


def _config_file() -> Path:
    return Path(os.environ.get("LUXC_CONFIG", Path.home() / ".config" / "luxc" / "config.toml"))


def _load() -> dict[str, str]:
    path = _config_file()
    table = {}
    if path.is_file():
        try:
            table = tomllib.loads(path.read_text()).get("preferences", {})
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"luxc config {path} is not valid TOML: {e}") from None
    values = {}
    for name, allowed in _ALLOWED.items():
        value = os.environ.get(f"LUXC_{name.upper()}", table.get(name, allowed[0]))
        _check(name, value)
        values[name] = value
    return values


def _check(name: str, value: str) -> None:
    if name not in _ALLOWED:
        raise ValueError(f"unknown luxc preference {name!r}; known: {', '.join(_ALLOWED)}")
    if value not in _ALLOWED[name]:
        raise ValueError(f"preference {name} must be one of {', '.join(_ALLOWED[name])}; "
                         f"received {value!r}")


def preference(name: str) -> str:
    """The current value of preference ``name``."""
    global _values
    if _values is None:
        _values = _load()
    return _values[name]


def set_preferences(**prefs: str) -> None:
    """Set preferences for this process, e.g. ``set_preferences(recompile_check="warn")``."""
    global _values
    if _values is None:
        _values = _load()
    for name, value in prefs.items():
        _check(name, value)
    _values.update(prefs)


def set_dispatch_doctor_preferences(mode: str | None = None, *, luxcore: str = "disable",
                                    luxlib: str = "disable") -> None:
    """Lux's ``set_dispatch_doctor_preferences!``: luxc's type-stability check, by level.

    ``set_dispatch_doctor_preferences(mode)`` sets both levels; the keywords set each one.
    Modes: ``"disable"`` (default), ``"warn"``, ``"error"``. Where Lux's DispatchDoctor flags
    Julia functions whose return type cannot be inferred, luxc checks, when a layer or loss
    is traced (once per compilation under ``AutoXLA``, every call when run op by op), that
    its floating outputs keep the floating dtype of the layer's parameters (of its input for
    a parameter-free layer; of the prediction for a loss) and are not weak-typed: an
    accidental promotion (a float64 constant, a bfloat16 model fed float32) silently doubles
    the cost of what follows or makes a later call recompile. ``luxcore`` checks every
    layer's call (user layers and ``@compact`` included), ``luxlib`` every loss. Unlike Lux,
    the change takes effect at once, for programs traced afterwards.

    >>> import luxc
    >>> luxc.set_dispatch_doctor_preferences("warn")
    >>> luxc.preference("instability_check_luxlib")
    'warn'
    >>> luxc.set_dispatch_doctor_preferences(luxcore="disable", luxlib="disable")
    """
    if mode is not None:
        luxcore = luxlib = mode
    for name, value in (("mode" if mode is not None else "luxcore", luxcore), ("luxlib", luxlib)):
        if value not in _ALLOWED["instability_check_luxcore"]:
            raise ValueError(f"set_dispatch_doctor_preferences: {name} must be 'disable', 'warn' "
                             f"or 'error'; received {value!r}")
    set_preferences(instability_check_luxcore=luxcore, instability_check_luxlib=luxlib)
