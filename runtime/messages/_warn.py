"""Warnings that point at the user's line, not at luxc's internals."""

from __future__ import annotations

import sys
import warnings


def _is_luxc(module: str) -> bool:
    return module == "luxc" or module.startswith("luxc.")


def warn_user(message: str, category: type[Warning]) -> None:
    """``warnings.warn`` attributed to the first caller outside luxc (the user's call site)."""
    frame, level = sys._getframe(1), 2
    while frame is not None and _is_luxc(frame.f_globals.get("__name__", "")):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
