"""The child process that checks a stranger's modules (runtime/trust/_module_check.py), attacked
where it checks several at once: each module keeps its own time limit, a refusal names the
module it is about, and what the child writes reaches the terminal escaped.

A stand-in child (``_CHILD`` replaced) plays a slow or failing checker; the real one is
exercised by tests/trust/test_files_are_data.py and test_stranger_artifact.py."""

import os
import re
import time
from pathlib import Path

import pytest

from luxc.runtime.files._errors import ArtifactError
from luxc.runtime.trust import _module_check as module_check
from luxc.runtime.trust._module_check import check_untrusted_modules
from tests.trust._artifacts import exported_with_custom_call

# Reads what the real child reads, then answers module i after DELAYS[i] seconds (a slow
# parser), or writes STDERR and exits 1 after the answers listed.
_STAND_IN = """
import json, os, sys, time
sizes = json.loads(sys.argv[3])
sys.stdin.buffer.read()
for i, delay in enumerate(json.loads(os.environ["STAND_IN_DELAYS"])):
    time.sleep(delay)
    print(json.dumps({"module": i, "targets": []}), flush=True)
if os.environ.get("STAND_IN_STDERR"):
    sys.stderr.write(os.environ["STAND_IN_STDERR"])
    sys.exit(1)
"""


@pytest.fixture
def stand_in(monkeypatch):
    monkeypatch.setattr(module_check, "_CHILD", _STAND_IN)

    def configure(delays, stderr=""):
        monkeypatch.setenv("STAND_IN_DELAYS", str(list(delays)))
        monkeypatch.setenv("STAND_IN_STDERR", stderr)
    return configure


@pytest.mark.slow
def test_each_module_has_its_own_time_limit(stand_in):
    # Two modules of 3 s each pass a 5 s limit (6 s in all: a shared limit would refuse them);
    # the second one taking longer than 5 s is refused by name, after about 5 s more.
    stand_in([3, 3])
    assert check_untrusted_modules({"a": b"x", "b": b"y"}, timeout=5) == {"a": set(), "b": set()}
    stand_in([0, 60])
    with pytest.raises(ArtifactError, match=r"^b: checking its StableHLO did not finish in 5 s"):
        check_untrusted_modules({"a": b"x", "b": b"y"}, timeout=5)


def test_a_crash_names_the_module_it_was_on_and_its_escaped_exception_line(stand_in):
    # One answer, then an exception and jax's note after it, a terminal escape in the message.
    stand_in([0], "Traceback (most recent call last):\n"
                  "ValueError: bad \x1b]0;PWNED\x07 bytes\n"
                  "For simplicity, JAX has removed its internal frames from the traceback\n")
    with pytest.raises(ArtifactError) as raised:
        check_untrusted_modules({"a": b"x", "b": b"y"}, timeout=60)
    message = str(raised.value)
    assert message.startswith("b: its StableHLO made the checking process fail (exit code 1: "
                              "ValueError: bad \\x1b]0;PWNED\\x07 bytes)"), message
    assert "\x1b" not in message and "\x07" not in message


def test_a_crash_after_every_answer_names_every_module_not_the_last(stand_in):
    # The child answered about both modules, then failed on its way out: not b's fault alone.
    stand_in([0, 0], "ValueError: late\n")
    with pytest.raises(ArtifactError) as raised:
        check_untrusted_modules({"a": b"x", "b": b"y"}, timeout=60)
    assert str(raised.value) == ("a and b: their StableHLO made the checking process fail after "
                                 "its answers (exit code 1: ValueError: late); luxc refuses them")


def test_no_time_limit_is_math_inf_and_a_limit_must_be_positive(stand_in):
    import math

    stand_in([0.5])
    assert check_untrusted_modules({"a": b"x"}, timeout=math.inf) == {"a": set()}
    for bad in (0, -1, math.nan):
        with pytest.raises(ValueError, match=r"^timeout must be a positive number of seconds"):
            check_untrusted_modules({"a": b"x"}, timeout=bad)


def test_what_an_earlier_module_calls_is_refused_before_a_later_one_breaks_the_child():
    modules = {"a": exported_with_custom_call("my_native_kernel"),
               "b": b"\x00garbage that is no jax.export artifact"}
    with pytest.raises(ArtifactError, match=re.escape(
            "a: its StableHLO calls native functions my_native_kernel by name")):
        check_untrusted_modules(modules)


def test_an_answer_out_of_turn_is_a_failure_not_a_result(stand_in, monkeypatch):
    # A child that answers for module 1 first: refused, naming module 0.
    monkeypatch.setattr(module_check, "_CHILD", _STAND_IN.replace('"module": i', '"module": 1 - i'))
    stand_in([0, 0])
    with pytest.raises(ArtifactError, match=r"^a: its StableHLO made the checking process fail"):
        check_untrusted_modules({"a": b"x", "b": b"y"}, timeout=60)


# Answers module 0, then writes to stdout without end, counting the bytes the parent took.
_FLOOD = """
import json, os, sys
sys.stdin.buffer.read()
print(json.dumps({"module": 0, "targets": []}), flush=True)
written, chunk = 0, b"x" * 65535 + b"\\n"
while True:
    written += os.write(1, chunk)
    with open(os.environ["STAND_IN_COUNT"], "w") as f:
        f.write(str(written))
"""


def test_what_a_child_writes_after_its_answers_is_not_kept(tmp_path, monkeypatch):
    # Refused (the parent stops reading once it has every answer: the child's next writes
    # fail), having written no more than the pipe holds and one answer line's bound.
    monkeypatch.setattr(module_check, "_CHILD", _FLOOD)
    monkeypatch.setenv("STAND_IN_COUNT", str(tmp_path / "count"))
    with pytest.raises(ArtifactError, match=r"^a: .*; luxc refuses it$"):
        check_untrusted_modules({"a": b"x"}, timeout=2)
    count = tmp_path / "count"  # absent: its first write after the answer already failed
    assert (int(count.read_text()) if count.exists() else 0) < 4 * 2**20


# Starts a process that keeps its stdout (a copy of the child's) open, then hangs.
_GRANDCHILD = """
import os, subprocess, sys, time
sys.stdin.buffer.read()
sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
with open(os.environ["STAND_IN_PID"], "w") as f:
    f.write(str(sleeper.pid))
time.sleep(120)
"""


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return any(line.split()[:2] == ["State:", "Z"] for line in f)
    except FileNotFoundError:
        return True


@pytest.mark.skipif(os.name != "posix" or not Path("/proc/self").exists(),
                    reason="process groups and /proc")
def test_a_child_that_started_a_process_is_stopped_with_it_on_time(tmp_path, monkeypatch):
    monkeypatch.setattr(module_check, "_CHILD", _GRANDCHILD)
    monkeypatch.setenv("STAND_IN_PID", str(tmp_path / "pid"))
    started = time.monotonic()
    with pytest.raises(ArtifactError, match=r"^a: checking its StableHLO did not finish in 3 s"):
        check_untrusted_modules({"a": b"x"}, timeout=3)
    # Not after the 120 s the process it started sleeps: that process was stopped too.
    assert time.monotonic() - started < 60
    pid = int((tmp_path / "pid").read_text())
    deadline = time.monotonic() + 30
    while not _gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)  # the kernel delivering SIGKILL: polled, with a bound
    assert _gone(pid)


def test_no_modules_start_no_child(monkeypatch):
    monkeypatch.setattr(module_check.subprocess, "Popen", None)  # would fail if called
    assert check_untrusted_modules({}) == {}
