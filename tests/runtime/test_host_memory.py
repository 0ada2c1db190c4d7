"""``luxc.retain_host_memory``: freed host memory stays in the process, so a compiled step whose
temporaries exceed glibc's mmap threshold stops faulting its pages in again every call.

Each case runs in a fresh interpreter, since the setting is process-wide and cannot be undone.
The page-fault counts come from ``getrusage``; no time is measured.
"""

import json
import subprocess
import sys
import textwrap

import pytest

from luxc.runtime.performance._host_memory import glibc_version

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(glibc_version() is None, reason="glibc's malloc settings only")]

_STEP = textwrap.dedent("""
    import json, resource, sys
    import jax, jax.numpy as jnp, optax, luxc
    mode, program = sys.argv[1:]
    if mode != "default":
        assert luxc.retain_host_memory(one_arena=mode == "one-arena").applied
    if program == "luxc":
        model = luxc.nn.Chain(luxc.nn.Dense(64, 64, jax.nn.relu), luxc.nn.Dense(64, 64))
        ps, st = luxc.setup(jax.random.key(0), model)
        ts = luxc.TrainState(model, ps, st, optax.sgd(1e-3))
        # 131072 x 64 float32 activations: 32 MiB each, in luxc's heaps of at most 30 MiB
        # (raised to the largest tensor).
        x = jax.random.normal(jax.random.key(1), (131072, 64))
        def call():
            global ts
            _, loss, _, ts = luxc.training.single_train_step_(luxc.AutoXLA(), luxc.MSELoss(),
                                                              (x, x), ts)
            return loss
    else:
        # A plain jax.jit program: its temporaries are one block of 128 MiB.
        x = jax.random.normal(jax.random.key(1), (8192, 4096))
        w = jnp.ones((8192, 8))
        f = jax.jit(lambda x: jnp.sum(jnp.sin(x).T @ w))
        def call():
            return f(x)
    for _ in range(3):
        jax.block_until_ready(call())
    faults = []
    for _ in range(9):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        jax.block_until_ready(call())
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(json.dumps(sorted(faults)[len(faults) // 2]))
""")


def _faults_per_step(mode: str, program: str) -> float:
    out = subprocess.run([sys.executable, "-c", _STEP, mode, program], capture_output=True,
                         text=True, timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_retained_memory_stops_a_large_step_faulting_its_temporaries_in_each_call():
    default = _faults_per_step("default", "luxc")
    retained = _faults_per_step("retain", "luxc")
    # The median step: 32 MiB is 8192 pages, and several such blocks fault in every call under
    # glibc's defaults (so import luxc alone changed nothing); once freed memory is kept, only
    # the first step a worker thread runs fills that thread's heap.
    assert default > 8192, default
    assert retained < default / 20, (retained, default)


def test_one_arena_also_keeps_a_block_over_64_mib_that_a_worker_thread_frees():
    # glibc maps a block over 64 MiB anew for a thread with its own arena whatever the
    # settings; on the one main arena it comes from, and goes back to, the retained heap.
    retained = _faults_per_step("retain", "jit")
    one_arena = _faults_per_step("one-arena", "jit")
    assert retained > 16384, retained
    assert one_arena < retained / 20, (one_arena, retained)
