"""The ``--checkpoint DIR`` of a ``luxc run``: locked for the run, each checkpoint naming the
run that wrote it, nothing else in the directory ever replaced or removed.

A run has an identity, kept in the run record of every checkpoint it writes
(:mod:`luxc.runtime.artifacts._checkpoint_format`): a random ``run_id``, ``artifact`` (the SHA-256 of the
artifact's file table, so the same bytes give the same name wherever they are), when it
``started``, its ``seed`` and ``origin``. A resumed run keeps its identity. From it:

* a fresh run refuses a directory holding another run's checkpoints (``--new-run`` puts it
  beside them when none has a step it will write);
* ``--keep K`` counts and removes only this run's checkpoints;
* ``--resume`` continues the run that started last in the directory from its newest
  checkpoint, refusing one of another artifact and a damaged one (naming the one before);
* a file named like a checkpoint that is not one (another program's, a truncated copy) is
  refused before the first step: luxc never writes over it;
* ``fcntl.flock`` on ``DIR/.luxc-run.lock``, held until the command ends, keeps a second run
  out of the directory.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import secrets
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from luxc.cli._common import CliError
from luxc.cli.run_outputs import check_outside
from luxc.runtime.artifacts._checkpoint_format import is_checkpoint, run_in_header
from luxc.runtime.artifacts._manifest import Manifest
from luxc.runtime.files._atomic_write import check_writable_directory
from luxc.runtime.files._errors import ArtifactError
from luxc.runtime.messages._shown import shown

LOCK_NAME = ".luxc-run.lock"
_CHECKPOINT = re.compile(r"step-(\d{8,})\.safetensors")


@dataclass(frozen=True)
class Found:
    """A file named like a checkpoint: its step (from the name), whether it is a luxc
    checkpoint, and the run record in its header (unverified; ``None``: no identity)."""

    path: Path
    step: int
    luxc: bool
    run: dict[str, Any] | None

    def of_run(self, run_id: str) -> bool:
        return self.run is not None and self.run.get("run_id") == run_id


def artifact_digest(manifest: Manifest) -> str:
    """The artifact's name in a run record: the SHA-256 of its file table (every file's hash),
    written as ``manifest.json`` writes it."""
    table = {name: {"sha256": e.sha256, "size": e.size} for name, e in manifest.files.items()}
    return hashlib.sha256(json.dumps(table, sort_keys=True).encode()).hexdigest()


def new_run(artifact: str, artifact_dir: str, seed: int, origin: int) -> dict[str, Any]:
    """The run record of a run starting now (``artifact_dir`` only to name it in messages)."""
    return {"run_id": secrets.token_hex(16), "artifact": artifact, "started": time.time_ns(),
            "artifact_dir": str(Path(artifact_dir).absolute()), "seed": seed, "origin": origin}


def open_directory(path: str, artifact_dir: str, *, resume: bool, beside: bool) -> list[Found]:
    """Check ``--checkpoint path`` and list what it holds, writing nothing. Refuses (one line) a
    dangling link, a file named like a checkpoint that is not one, and, for a fresh run without
    ``beside`` (``--new-run``), another run's checkpoints."""
    if os.path.islink(path) and not os.path.exists(path):
        raise CliError(f"--checkpoint {path} is a symbolic link to {os.readlink(path)}, which "
                       "does not exist; create that directory or give another --checkpoint")
    check_outside(path, artifact_dir, "--checkpoint")
    check_writable_directory(path, "--checkpoint")
    if os.path.lexists(Path(path) / LOCK_NAME):  # a run may be using it: say so first
        _lock(Path(path))
    found = scan(path)
    alien = next((f for f in found if not f.luxc), None)
    if alien is not None:
        earlier = [f.path.name for f in found if f.luxc and f.step < alien.step]
        then = f"; --resume then continues from {earlier[-1]}" if resume and earlier else ""
        raise CliError(f"--checkpoint {path} holds {alien.path.name}, which is not a luxc "
                       "checkpoint (damaged, or another program's file); luxc does not write "
                       f"over it: move it out of {path}{then}")
    if found and not resume and not beside:
        raise CliError(f"--checkpoint {path} holds the checkpoints of another run "
                       f"({_names(found)}); continue it with --resume, give an empty directory, "
                       "or add --new-run to start a new run beside them (they are kept)")
    return found


def _lock(directory: Path) -> None:
    """Hold an exclusive lock on ``directory/.luxc-run.lock`` until the command ends (the
    command's context remembers it)."""
    lock = directory / LOCK_NAME
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     0o666)
    except OSError as e:
        raise CliError(f"--checkpoint {directory}: cannot open its lock file {lock} "
                       f"({e.strerror}); remove {lock} if it is not a file luxc wrote") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise CliError(f"--checkpoint {directory}: {lock} is not a regular file; remove it")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise CliError(f"--checkpoint {directory} is in use by another luxc run (it holds the "
                       f"lock {lock}); wait for that run to end, or give another "
                       "--checkpoint") from None
    context = click.get_current_context()
    context.meta[LOCK_NAME] = str(directory)
    context.call_on_close(lambda: os.close(fd))


def scan(directory: str | Path) -> list[Found]:
    """Every file of ``directory`` named like a checkpoint (``step-00000100.safetensors``),
    oldest step first."""
    found = []
    for p in (Path(directory).iterdir() if Path(directory).is_dir() else ()):
        if (m := _CHECKPOINT.fullmatch(p.name)) is not None:
            luxc = is_checkpoint(p)
            found.append(Found(p, int(m[1]), luxc, run_in_header(p) if luxc else None))
    return sorted(found, key=lambda f: f.step)


def _names(found: list[Found]) -> str:
    names = [f.path.name for f in found]
    return ", ".join(names) if len(names) <= 3 else f"{names[0]} ... {names[-1]}"


def resume(load: Callable[[Path], dict[str, Any] | None], directory: str, found: list[Found],
           artifact: str, artifact_dir: str) -> tuple[Path, dict[str, Any]] | None:
    """Continue the run that started last in ``directory``: ``load`` its newest checkpoint and
    return the path and the run record (with an identity added to one from an older luxc)."""
    runs = [f for f in found if f.run is not None and "run_id" in f.run]
    if runs:
        last = max(runs, key=lambda f: (f.run.get("started", 0), f.step)).run["run_id"]
        mine = [f for f in runs if f.of_run(last)]
    else:  # written by a luxc that named no runs
        mine = found
    if not mine:
        return None
    newest = mine[-1]
    theirs = newest.run or {}
    if theirs.get("artifact", artifact) != artifact:
        raise CliError(f"--resume: the run in {directory} ({newest.path.name}) trains the "
                       f"artifact {shown(theirs.get('artifact_dir', '?'), 200)} (sha256 "
                       f"{theirs['artifact'][:16]}...), not {artifact_dir} (sha256 "
                       f"{artifact[:16]}...); give the artifact it trains, or another "
                       "--checkpoint to start a new run")
    try:
        record = load(newest.path)
    except ArtifactError as e:
        before = f"resume from {mine[-2].path.name}" if len(mine) > 1 else "start the run over"
        raise CliError(f"--resume: {e}; move {newest.path.name} out of {directory} to "
                       f"{before}") from None
    base = new_run(artifact, artifact_dir, 0, 0)
    return newest.path, {**base, **(record or {}), "artifact": artifact}


def claim(directory: str, found: list[Found], run_id: str, first: int, last: int) -> None:
    """Just before the first step: create and lock ``directory`` for this command, check that
    it still holds what ``open_directory`` found, and refuse a run that would write a
    checkpoint where another run's is (steps ``first`` to ``last``)."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    if click.get_current_context().meta.get(LOCK_NAME) != str(directory):
        _lock(Path(directory))
    if [f.path.name for f in scan(directory)] != [f.path.name for f in found]:
        raise CliError(f"--checkpoint {directory} changed while this run started (another "
                       "program wrote there); run the command again")
    taken = [f for f in found if first <= f.step <= last and not f.of_run(run_id)]
    if taken:
        raise CliError(f"--checkpoint {directory} holds {_names(taken)} of another run, which "
                       f"this run (steps {first}-{last}) would write over; give another "
                       "--checkpoint")


def save(directory: str, step: int, keep: int, run_id: str, write: Callable[[Path], None]
         ) -> None:
    """Write this run's checkpoint of ``step`` with ``write(path)``, then remove all but this
    run's newest ``keep`` (never another run's, never another file)."""
    path = Path(directory) / f"step-{step:08d}.safetensors"
    if os.path.lexists(path) and not (is_checkpoint(path) and
                                      (run_in_header(path) or {}).get("run_id") == run_id):
        raise CliError(f"--checkpoint {directory}: {path.name} appeared during the run and is "
                       "not this run's; luxc does not write over it (the state is not saved)")
    write(path)
    for f in [f for f in scan(directory) if f.luxc and f.of_run(run_id)][:-keep]:
        f.path.unlink(missing_ok=True)
