"""luxc's preferences (Lux's Preferences.jl role), read once per process.

| name | values | default | what it controls |
|---|---|---|---|
| ``eltype_mismatch_handling`` | ``none`` ``warn`` ``convert`` ``error`` | ``none`` | ``match_eltype`` |
| ``recompile_check`` | ``none`` ``warn`` ``error`` | ``none`` | a recompile of a cached step |

Each is read from the environment variable ``LUXC_<NAME>`` (upper case), else from the
``[preferences]`` table of ``$LUXC_CONFIG`` or ``~/.config/luxc/config.toml``, else the default.
``set_preferences(**prefs)`` changes them for the running process.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

_ALLOWED = {
    "eltype_mismatch_handling": ("none", "warn", "convert", "error"),
    "recompile_check": ("none", "warn", "error"),
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
