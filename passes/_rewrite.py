"""The one place that imports MLIR's pattern-rewrite bindings, which jaxlib ships only under a
private path. A jaxlib upgrade that moves them touches this file alone.

They are loaded when a pass first runs, not when luxc is imported: a jaxlib without them
breaks the passes only, never ``luxc.losses`` or ``luxc.nn``.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from jaxlib.mlir import ir

_BINDINGS = "jaxlib.mlir._mlir_libs._mlir.rewrite"

# jaxlib's rewrite.PatternRewriter (replace_op, ip); named here for annotations only, so that
# reading this module does not load the bindings.
PatternRewriter = Any
Pattern = Callable[[ir.Operation, PatternRewriter], bool]


@functools.cache
def _bindings() -> ModuleType:
    try:
        return importlib.import_module(_BINDINGS)
    except ImportError as e:  # pragma: no cover - depends on the installed jaxlib
        import jaxlib

        raise ImportError(
            f"luxc.passes needs MLIR's rewrite bindings ({_BINDINGS}), which jaxlib "
            f"{jaxlib.__version__} does not provide; install jaxlib>=0.10.2,<0.11"
        ) from e


def apply_greedily(module: ir.Module, patterns: Sequence[tuple[str, Pattern]]) -> None:
    """Run ``patterns`` (``(root op name, fn)``) with MLIR's greedy driver to a fixed point.

    ``fn(op, rewriter)`` returns ``False`` when it matched and rewrote, ``True`` otherwise (the
    driver's convention). The driver also folds constants and drops dead ops.
    """
    rewrite = _bindings()
    with module.context:
        patterns_set = rewrite.RewritePatternSet(module.context)
        for root, fn in patterns:
            patterns_set.add(root, fn)
        rewrite.apply_patterns_and_fold_greedily(
            module, patterns_set.freeze(), rewrite.GreedyRewriteConfig()
        )


def replace_each(module: ir.Module, root: str | Sequence[str],
                 match: Callable[[ir.Operation], Any], build: Callable[..., ir.Value]) -> int:
    """Replace every ``root`` op (or op named in ``root``, a sequence) for which ``match(op)``
    returns a plan (not ``None``) by ``build(op, plan)``, built just before it; returns the
    number of ops replaced."""
    rewrites = 0

    def pattern(op: ir.Operation, rewriter: PatternRewriter) -> bool:
        nonlocal rewrites
        plan = match(op.operation)
        if plan is None:
            return True
        with rewriter.ip, op.location:
            new = build(op.operation, plan)
        rewriter.replace_op(op, [new])
        rewrites += 1
        return False

    roots = [root] if isinstance(root, str) else list(root)
    apply_greedily(module, [(name, pattern) for name in roots])
    return rewrites
