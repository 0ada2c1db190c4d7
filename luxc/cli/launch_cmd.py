"""``luxc launch``: N processes of one script on this machine, joined by ``jax.distributed``."""

from __future__ import annotations

import ctypes
import os
import queue
import runpy
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback

import click

from luxc.cli._common import CliError
from luxc.distributed import HEARTBEAT_ENV, NUM_PROCESSES_ENV, PROCESS_ID_ENV

# A dead process is seen by the launcher at once (it stops the others); under a cluster manager,
# the survivors' coordination client notices within HEARTBEAT_SECONDS (jax's default: 100 s). A
# collective waiting for a live but stuck peer fails after COLLECTIVE_TIMEOUT_SECONDS: not less,
# because one process may still be compiling a large step while the other already waits.
HEARTBEAT_SECONDS = 10
COLLECTIVE_TIMEOUT_SECONDS = 60
GRACE_SECONDS = 2.0
# Each process is a whole jax runtime (~116 MiB resident before any training); more than a few
# per core only time-slice and can exhaust memory, so -n is bounded unless asked for knowingly.
PROCESSES_PER_CPU = 4
PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>


def process_limit() -> int:
    """The most processes ``luxc launch`` starts without ``--allow-many``."""
    return PROCESSES_PER_CPU * (os.cpu_count() or 1)


def _become_subreaper() -> None:
    """On Linux, make the processes a launched script forks, and that outlive their parent,
    children of ``luxc launch`` instead of init, so that :func:`_stop` finds and stops them."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def run_child(script: str, args: list[str]) -> None:
    """Run ``script`` as ``__main__`` (what ``python script.py args`` does); on failure, leave
    at once with its exit code.

    A failing process must not linger: at a normal exit jax waits (up to 5 minutes) in a
    shutdown barrier for every other process, and the others wait for it in their next
    collective. Leaving with ``os._exit`` lets the launcher see the failure and stop them.
    """
    sys.argv = [script, *args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
        if code:
            _leave(code)
    except KeyboardInterrupt:  # stopped (Ctrl-C, or the launcher stopping the others): no trace
        _leave(130)
    except BaseException:  # noqa: BLE001 - any failure of the user's script ends this process
        traceback.print_exc()
        _leave(1)


def _leave(code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


_CHILD = "import sys; from luxc.cli.launch_cmd import run_child; run_child(sys.argv[1], sys.argv[2:])"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _environment(rank: int, n: int, port: int, devices: int) -> dict[str, str]:
    flags = os.environ.get("XLA_FLAGS", "")
    flags += (f" --xla_force_host_platform_device_count={devices}"
              f" --xla_cpu_collective_timeout_seconds={COLLECTIVE_TIMEOUT_SECONDS}")
    address = f"127.0.0.1:{port}"
    return {**os.environ, "XLA_FLAGS": flags.strip(), "PYTHONUNBUFFERED": "1",
            "JAX_COORDINATOR_ADDRESS": address, "JAX_COORDINATOR_BIND_ADDRESS": address,
            NUM_PROCESSES_ENV: str(n), PROCESS_ID_ENV: str(rank),
            HEARTBEAT_ENV: str(HEARTBEAT_SECONDS)}


def _relay(stream, prefix: str, out) -> None:
    for line in iter(stream.readline, ""):
        out.write(prefix + line)
        out.flush()
    stream.close()


def _descendants() -> list[int]:
    """Every live process under this one (from /proc; empty where there is none)."""
    children: dict[int, list[int]] = {}
    pids = [e for e in os.listdir("/proc") if e.isdigit()] if os.path.isdir("/proc") else []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):  # gone meanwhile
            continue
        children.setdefault(ppid, []).append(int(pid))
    out, todo = [], [os.getpid()]
    while todo:
        for child in children.get(todo.pop(), ()):
            out.append(child)
            todo.append(child)
    return out


class _Terminated(Exception):
    """``luxc launch`` received SIGTERM (``kill``, a job scheduler's stop)."""


def _terminate(signum: int, frame: object) -> None:
    # SIGTERM stops the launch as Ctrl-C does: the processes get SIGINT and the grace period,
    # then SIGKILL; by default Python would die at once and leave them running on their own.
    raise _Terminated


def _signal_groups(procs: list[subprocess.Popen], sig: int) -> None:
    # A group outlives its leader while a process it forked runs: signal it then too, but only
    # a group with a member under this process (its id may be reused once it is empty).
    groups = {p.pid for p in procs if p.poll() is None}
    for pid in _descendants():
        try:
            groups.add(os.getpgid(pid))
        except ProcessLookupError:
            continue
    for group in groups & {p.pid for p in procs}:
        try:
            os.killpg(group, sig)
        except ProcessLookupError:
            pass


def _stop(procs: list[subprocess.Popen], before: set[int]) -> None:
    """Stop every process of the launch; ``before`` are processes under this one that were
    there before it started (left alone)."""
    _signal_groups(procs, signal.SIGINT)
    deadline = time.monotonic() + GRACE_SECONDS
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    _signal_groups(procs, signal.SIGKILL)
    for p in procs:
        p.wait()
    # What escaped the groups (a new session) was reparented here (subreaper): kill and reap it.
    stray = [pid for pid in _descendants() if pid not in before]
    for pid in stray:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
    for pid in stray:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:  # a grandchild: its own parent reaps it
            pass


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode  # killed by signal s: 128 + s


def _watch(procs: list[subprocess.Popen]) -> int:
    exits: queue.Queue[tuple[int, int]] = queue.Queue()
    for rank, p in enumerate(procs):
        threading.Thread(target=lambda r=rank, p=p: exits.put((r, p.wait())), daemon=True).start()
    for _ in procs:
        while True:
            try:
                rank, code = exits.get(timeout=0.1)  # a timeout keeps Ctrl-C responsive
                break
            except queue.Empty:
                continue
        if code:
            click.echo(f"luxc launch: process {rank} exited with code {code}; stopping the others",
                       err=True)
            return _exit_code(code)
    return 0


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("-n", "--processes", "n", required=True, type=click.IntRange(min=1),
              help="number of processes")
@click.option("--allow-many", is_flag=True,
              help=f"allow more than {PROCESSES_PER_CPU} processes per CPU")
@click.option("--devices-per-process", default=1, show_default=True, type=click.IntRange(min=1),
              help="host (CPU) devices each process gets")
@click.argument("script", type=click.Path(exists=True, dir_okay=False))
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def launch(n, allow_many, devices_per_process, script, args):
    """Run SCRIPT in N processes on this machine, joined through a coordinator on 127.0.0.1.

    Each line of output is prefixed with the process's rank. If a process fails, the others are
    stopped and launch exits with its code; Ctrl-C or SIGTERM stops them all, and so does
    launch's end any process they forked. SCRIPT calls luxc.distributed.initialize() first.
    N is at most 4 per CPU (each process is a jax runtime of ~116 MiB) unless --allow-many is
    given.
    """
    if n > process_limit() and not allow_many:
        raise CliError(f"launch: -n {n} is more than {process_limit()} processes "
                       f"({PROCESSES_PER_CPU} per CPU of this machine's {os.cpu_count()}; each "
                       f"is a jax runtime of ~116 MiB); use fewer, or add --allow-many to start "
                       f"them anyway")
    before = set(_descendants())
    _become_subreaper()
    signal.signal(signal.SIGTERM, _terminate)
    port = _free_port()
    procs, relays = [], []
    try:
        for rank in range(n):
            p = subprocess.Popen([sys.executable, "-c", _CHILD, script, *args], env=_environment(
                rank, n, port, devices_per_process), stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True, start_new_session=True)
            procs.append(p)
            for stream, out in ((p.stdout, sys.stdout), (p.stderr, sys.stderr)):
                t = threading.Thread(target=_relay, args=(stream, f"[{rank}] ", out), daemon=True)
                t.start()
                relays.append(t)
        code = _watch(procs)
    except KeyboardInterrupt:
        click.echo("luxc launch: interrupted; stopping every process", err=True)
        code = 130
    except _Terminated:
        click.echo("luxc launch: terminated (SIGTERM); stopping every process", err=True)
        code = 128 + signal.SIGTERM
    except OSError as e:
        raise CliError(f"launch: cannot start {script}: {e}") from None
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the stop below is bounded; let it end
        _stop(procs, before)
        for t in relays:
            t.join(timeout=1.0)
    sys.exit(code)
