"""The one place that imports MLIR's pattern-rewrite bindings, which jaxlib ships only under a
private path. A jaxlib upgrade that moves them touches this file alone."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from jaxlib.mlir import ir

try:
    from jaxlib.mlir._mlir_libs._mlir import rewrite as _rewrite
except ImportError as e:  # pragma: no cover - depends on the installed jaxlib
    import jaxlib

    raise ImportError(
        f"luxc.passes needs MLIR's rewrite bindings (jaxlib.mlir._mlir_libs._mlir.rewrite), "
        f"which jaxlib {jaxlib.__version__} does not provide; install jaxlib>=0.10.2,<0.11"
    ) from e

PatternRewriter = _rewrite.PatternRewriter
Pattern = Callable[[ir.Operation, PatternRewriter], bool]


def apply_greedily(module: ir.Module, patterns: Sequence[tuple[str, Pattern]]) -> None:
    """Run ``patterns`` (``(root op name, fn)``) with MLIR's greedy driver to a fixed point.

    ``fn(op, rewriter)`` returns ``False`` when it matched and rewrote, ``True`` otherwise (the
    driver's convention). The driver also folds constants and drops dead ops.
    """
    with module.context:
        patterns_set = _rewrite.RewritePatternSet(module.context)
        for root, fn in patterns:
            patterns_set.add(root, fn)
        _rewrite.apply_patterns_and_fold_greedily(
            module, patterns_set.freeze(), _rewrite.GreedyRewriteConfig()
        )


def replace_each(module: ir.Module, root: str, match: Callable[[ir.Operation], Any],
                 build: Callable[..., ir.Value]) -> int:
    """Replace every ``root`` op for which ``match(op)`` returns a plan (not ``None``) by
    ``build(op, plan)``, built just before it; returns the number of ops replaced."""
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

    apply_greedily(module, [(root, pattern)])
    return rewrites
