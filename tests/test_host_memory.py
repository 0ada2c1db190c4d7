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

from luxc.runtime.host_memory import glibc_version

_STEP = textwrap.dedent("""
    import json, resource, sys
    import jax, jax.numpy as jnp, optax, luxc
    if sys.argv[1] == "retain":
        assert luxc.retain_host_memory().applied
    model = luxc.nn.Chain(luxc.nn.Dense(64, 64, jax.nn.relu), luxc.nn.Dense(64, 64))
    ps, st = luxc.setup(jax.random.key(0), model)
    ts = luxc.TrainState(model, ps, st, optax.sgd(1e-3))
    # 131072 x 64 float32 activations: 32 MiB each, so each is mapped anew unless retained.
    x = jax.random.normal(jax.random.key(1), (131072, 64))
    step = luxc.training.single_train_step_
    for _ in range(3):
        _, loss, _, ts = step(luxc.AutoXLA(), luxc.MSELoss(), (x, x), ts)
    jax.block_until_ready(loss)
    faults = []
    for _ in range(9):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        _, loss, _, ts = step(luxc.AutoXLA(), luxc.MSELoss(), (x, x), ts)
        jax.block_until_ready(loss)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(json.dumps(sorted(faults)[len(faults) // 2]))
""")


def _faults_per_step(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", _STEP, mode], capture_output=True, text=True,
                         timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(glibc_version() is None,
                    reason="glibc's malloc settings only exist with glibc")
def test_retained_memory_stops_a_large_step_faulting_its_temporaries_in_each_call():
    default = _faults_per_step("default")
    retained = _faults_per_step("retain")
    # The median step: 32 MiB is 8192 pages, and several such blocks fault in every call under
    # glibc's defaults (so import luxc alone changed nothing); once freed memory is kept, only
    # the first step a worker thread runs fills that thread's heap.
    assert default > 8192, default
    assert retained < default / 20, (retained, default)
