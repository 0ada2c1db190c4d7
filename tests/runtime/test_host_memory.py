"""``luxc.retain_host_memory``: freed host memory stays in the process, so a compiled step whose
temporaries exceed glibc's mmap threshold stops faulting its pages in again every call.

Each case runs in a fresh interpreter, since the setting is process-wide and cannot be undone.
The page-fault counts come from ``getrusage``; no time is measured.
"""

import json
import os
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
    other_arenas = 0
    if mode != "default":
        result = luxc.retain_host_memory(one_arena=mode == "one-arena")
        assert result.applied
        other_arenas = result.other_arenas
    if program == "luxc":
        model = luxc.nn.Chain(luxc.nn.Dense(32, 32, jax.nn.relu), luxc.nn.Dense(32, 32))
        ps, st = luxc.setup(jax.random.key(0), model)
        ts = luxc.TrainState(model, ps, st, optax.sgd(1e-3))
        # 262144 x 32 float32 activations: 32 MiB each, in luxc's heaps of at most 30 MiB
        # (raised to the largest tensor); 32 features, not 64: half the products' work.
        x = jax.random.normal(jax.random.key(1), (262144, 32))
        def call():
            global ts
            _, loss, _, ts = luxc.training.single_train_step_(luxc.AutoXLA(), luxc.MSELoss(),
                                                              (x, x), ts)
            return loss
    else:
        # A plain jax.jit program: its temporaries are one block of 128 MiB (the transposed
        # x + 1: an addition, as cheap as any op that makes the block).
        x = jax.random.normal(jax.random.key(1), (8192, 4096))
        w = jnp.ones((8192, 8))
        f = jax.jit(lambda x: jnp.sum((x + 1).T @ w))
        def call():
            return f(x)
    for _ in range(3):
        jax.block_until_ready(call())
    faults = []
    for _ in range(9):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        jax.block_until_ready(call())
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(json.dumps([sorted(faults)[len(faults) // 2], other_arenas]))
""")


def _run(mode: str, program: str, env: dict | None = None) -> tuple[float, int]:
    """The median step's page faults, and how many malloc heaps other threads had made before
    ``retain_host_memory`` was called."""
    out = subprocess.run([sys.executable, "-c", _STEP, mode, program], capture_output=True,
                         text=True, timeout=300, check=True, env=env)
    faults, other_arenas = json.loads(out.stdout.strip().splitlines()[-1])
    return faults, other_arenas


def _faults_per_step(mode: str, program: str) -> float:
    return _run(mode, program)[0]


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
    one_arena, other_arenas = _run("one-arena", "jit")
    if other_arenas:
        # A thread made its own heap before the call (seen once in CI, never here): glibc may
        # give that heap to one of XLA's workers, as the result says. Its remedy must work.
        env = dict(os.environ, MALLOC_ARENA_MAX="1")
        one_arena, other_arenas = _run("one-arena", "jit", env)
        assert other_arenas == 0
    assert retained > 16384, retained
    assert one_arena < retained / 20, (one_arena, retained)


_EARLY_THREAD = textwrap.dedent("""
    import json, threading, luxc
    # A thread that allocates (so glibc gives it a heap of its own) and ends before the call.
    worker = threading.Thread(target=lambda: [bytearray(4096) for _ in range(64)])
    worker.start()
    worker.join()
    result = luxc.retain_host_memory(one_arena=True)
    print(json.dumps([result.applied, result.other_arenas, result.reason]))
""")


@pytest.mark.parametrize("arena_max", [None, "1"])
def test_one_arena_reports_the_heaps_threads_made_before_the_call(arena_max):
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    if arena_max:
        env["MALLOC_ARENA_MAX"] = arena_max
    out = subprocess.run([sys.executable, "-c", _EARLY_THREAD], capture_output=True, text=True,
                         timeout=300, check=True, env=env)
    applied, other_arenas, reason = json.loads(out.stdout.strip().splitlines()[-1])
    assert applied
    if arena_max:
        assert (other_arenas, reason) == (0, "")
    else:
        # The ended thread's heap waits on glibc's free list for the next thread that allocates.
        assert other_arenas >= 1
        assert "MALLOC_ARENA_MAX=1" in reason, reason


def test_the_cli_says_when_retaining_host_memory_is_not_what_it_asked_for(monkeypatch):
    # The real call would change this test process's malloc for good: the CLI's wiring only.
    from click.testing import CliRunner

    import luxc.cli._common as common
    from luxc.runtime.performance import RetainedMemory

    said = "2 malloc heap(s) made by threads before this call remain"
    monkeypatch.setattr(common, "_retain_host_memory",
                        lambda one_arena: RetainedMemory(True, {}, said, 2) if one_arena else None)
    result = CliRunner().invoke(common.main, ["--retain-host-memory", "passes"])
    assert result.exit_code == 0, result.output
    assert f"luxc: --retain-host-memory: {said}\n" in result.stderr
    assert said not in result.stdout
