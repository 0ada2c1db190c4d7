"""``python -m benchmarks.ablation``: luxc's defaults, each against its alternatives, all in one
luxc worker process per workload under the protocol of ``python -m benchmarks`` (shuffled
order every round, the load recorded at every turn). It prints its tables and writes nothing:
a default earns its place by a win here on an idle machine.

    python -m benchmarks.ablation --only lenet --rounds 21
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import luxc
import luxc.passes
from benchmarks import cases, report
from benchmarks._load import LoadMeter
from benchmarks.peers_jax import luxc_step

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
        "default, relu_mask_from_output toggled": {"passes": _toggled("relu_mask_from_output")},
        "bf16": {"mixed_precision": "bf16"},
        "bf16, reduce_window_f32 toggled": {"mixed_precision": "bf16",
                                            "passes": _toggled("reduce_window_f32")},
        "bf16, elementwise_bf16_f32 toggled": {"mixed_precision": "bf16",
                                               "passes": _toggled("elementwise_bf16_f32")},
        "bf16, convert_bf16_bits toggled": {"mixed_precision": "bf16",
                                            "passes": _toggled("convert_bf16_bits")},
    },
    "transformer": {
        "default": {},
        "passes=none": {"passes": "none"},
        "dot_swap_operands": {"passes": ["dot_swap_operands"]},
        "no YNN fusions": {"xla_options": {_YNN: ""}},
        "YNN dots only": {"xla_options": {_YNN: _YNN_DOTS}},
        "dot_flatten toggled": {"passes": _toggled("dot_flatten")},
        "dot_scale_fold toggled": {"passes": _toggled("dot_scale_fold")},
        "temporaries in one heap (XLA's default)": {"xla_options": {_HEAP: -1}},
        "temporaries in 16 MiB heaps": {"xla_options": {_HEAP: 16 << 20}},
        "bf16": {"mixed_precision": "bf16"},
        "bf16, dot_bf16_batched toggled": {"mixed_precision": "bf16",
                                           "passes": _toggled("dot_bf16_batched")},
        "bf16, elementwise_bf16_f32 toggled": {"mixed_precision": "bf16",
                                               "passes": _toggled("elementwise_bf16_f32")},
    },
    "gpt": {
        "default": {},
        "bf16": {"mixed_precision": "bf16"},
        "bf16, elementwise_bf16_f32 toggled": {"mixed_precision": "bf16",
                                               "passes": _toggled("elementwise_bf16_f32")},
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
        "relu_mask_from_output toggled": {"passes": _toggled("relu_mask_from_output")},
    },
}


def makers(key: str) -> dict[str, tuple[None, Callable]]:
    """The ``ablation`` group's variants of workload ``key`` (:mod:`benchmarks.cases`)."""
    return {label: (None, lambda w, x, y, kw=kwargs: luxc_step(w, x, y, luxc.CompileOptions(**kw)))
            for label, kwargs in ABLATIONS.get(key, {}).items()}


def main(argv: list[str] | None = None) -> None:
    from benchmarks._slow import SlowStretches
    from benchmarks.run import measure_workload

    parser = argparse.ArgumentParser(prog="python -m benchmarks.ablation")
    parser.add_argument("--only", help="comma-separated workloads: " + ", ".join(ABLATIONS))
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="short samples")
    parser.add_argument("--processes", type=int, default=1,
                        help="worker processes, each timing every variant in every round "
                             "(default 1; python -m benchmarks' --processes)")
    args = parser.parse_args(argv)
    args.device, args.variants, args.retain_host_memory = False, None, False
    print(f"CPU default passes: {', '.join(luxc.passes.default_pipeline('cpu'))}")
    meter, stretches = LoadMeter(), SlowStretches()
    for key in (args.only.split(",") if args.only else ABLATIONS):
        work = measure_workload(key, ("ablation",), args, meter, stretches)
        print("\n".join([cases.title(key), report.loads_line(work), *report.variant_table(work, "")]))


if __name__ == "__main__":
    main()
