"""``python -m benchmarks.ablation``: luxc's tuned defaults, each against its alternatives in
the same interleaved run. Every default pass or XLA option is justified here
(``benchmarks/README.md`` keeps the numbers).

    python -m benchmarks.ablation --only lenet --rounds 21
"""

from __future__ import annotations

import argparse
from functools import partial

import luxc
import luxc.passes

try:
    from benchmarks import peers_jax
    from benchmarks import workloads as wl
    from benchmarks.run import measure
except ImportError:  # run as a script from benchmarks/
    import peers_jax
    import workloads as wl
    from run import measure

_YNN = "xla_cpu_experimental_ynn_fusion_type"
_HEAP = "xla_multiheap_size_constraint_per_heap"
_CONV_PASSES = ["conv_input_grad_dot", "conv_weight_grad_dot"]
# YNNPACK fusions XLA:CPU may form: only dots (and the element-wise ops around them).
_YNN_DOTS = "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"


def _toggled(name: str) -> list[str]:
    """The CPU default pipeline with pass ``name`` added, or taken out if it is in it."""
    default = list(luxc.passes.default_pipeline("cpu"))
    return [p for p in default if p != name] if name in default else [*default, name]


# workload -> label -> CompileOptions arguments. "default" is what a user gets.
ABLATIONS: dict[str, dict[str, dict]] = {
    "lenet": {
        "default": {},
        "passes=none": {"passes": "none"},
        "maxpool + conv_few_channels": {"passes": ["maxpool_grad_select", "conv_few_channels"]},
        "+ conv_weight_grad_dot": {"passes": ["maxpool_grad_select", "conv_few_channels",
                                              *_CONV_PASSES]},
        "default, no YNN fusions": {"xla_options": {_YNN: ""}},
        "default, dot_flatten toggled": {"passes": _toggled("dot_flatten")},
        "default, YNN dots only": {"xla_options": {_YNN: _YNN_DOTS}},
        "+ conv_weight_grad_dot, no YNN fusions": {
            "passes": ["maxpool_grad_select", "conv_few_channels", *_CONV_PASSES],
            "xla_options": {_YNN: ""}},
        "passes=none, no YNN fusions": {"passes": "none", "xla_options": {_YNN: ""}},
    },
    "transformer": {
        "default": {},
        "passes=none": {"passes": "none"},
        "dot_swap_operands": {"passes": ["dot_swap_operands"]},
        "no YNN fusions": {"xla_options": {_YNN: ""}},
        "YNN dots only": {"xla_options": {_YNN: _YNN_DOTS}},
        "dot_flatten toggled": {"passes": _toggled("dot_flatten")},
        "temporaries in one heap (XLA's default)": {"xla_options": {_HEAP: -1}},
        "temporaries in 16 MiB heaps": {"xla_options": {_HEAP: 16 << 20}},
    },
    "dice": {
        "default": {},
        "dot_flatten toggled": {"passes": _toggled("dot_flatten")},
        "fuse_loss_reductions": {"passes": ["fuse_loss_reductions"]},
        "fuse_loss_reductions + no fusion emitters": {
            "passes": ["fuse_loss_reductions"], "xla_options": {"xla_cpu_use_fusion_emitters": False}},
    },
    "mlp": {
        "default": {},
        "dot_swap_operands": {"passes": ["dot_swap_operands"]},
        "no YNN fusions": {"xla_options": {_YNN: ""}},
        "YNN dots only": {"xla_options": {_YNN: _YNN_DOTS}},
    },
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ablation")
    parser.add_argument("--only", help="comma-separated workloads: " + ", ".join(ABLATIONS))
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args(argv)
    print(f"CPU default passes: {', '.join(luxc.passes.default_pipeline('cpu'))}")
    for work in wl.WORKLOADS:
        if work.key not in ABLATIONS or (args.only and work.key not in args.only.split(",")):
            continue
        makers = {label: partial(_luxc, luxc.CompileOptions(**kwargs))
                  for label, kwargs in ABLATIONS[work.key].items()}
        measure(work, makers, args.rounds, work.steps, f"{work.title}: luxc variants")


def _luxc(options, work, x, y):
    return peers_jax.luxc_step(work, x, y, options)


if __name__ == "__main__":
    main()
