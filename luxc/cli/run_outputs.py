"""What ``luxc run`` writes besides the terminal: checked before any step, written safely.

Every output is refused inside the artefact it runs (it would destroy it); an existing file is
replaced only when it is a luxc checkpoint (luxc never overwrites what it did not write);
checkpoints go into ``--checkpoint DIR`` as ``step-00000100.safetensors``, the newest K kept.
"""

from __future__ import annotations

import re
from pathlib import Path

from luxc.cli._common import CliError
from luxc.runtime.atomic_write import check_writable_directory, check_writable_file
from luxc.runtime.checkpoint_format import is_checkpoint

_CHECKPOINT = re.compile(r"step-(\d{8,})\.safetensors")


def check_outside(path: str | Path, artifact: str | Path, what: str) -> None:
    """Refuse ``path`` inside the artefact directory (or the directory itself)."""
    target, art = Path(path).absolute().resolve(), Path(artifact).absolute().resolve()
    if target == art or art in target.parents:
        raise CliError(f"{what} {path} is inside the artefact {artifact}, which it would "
                       "destroy; write it elsewhere")


def check_state_file(path: str, artifact: str, what: str) -> None:
    """An output a checkpoint is written to: outside the artefact, writable, and either new or
    a luxc checkpoint already."""
    check_outside(path, artifact, what)
    check_writable_file(path, what)
    if Path(path).exists() and not is_checkpoint(path):
        raise CliError(f"{what} {path} exists and is not a luxc checkpoint; luxc does not "
                       "overwrite it: remove it yourself or choose another name")


def check_new_file(path: str, artifact: str, what: str, append: bool = False) -> None:
    """An output luxc creates (a log, a plot): outside the artefact, writable, not existing
    (unless ``append``)."""
    check_outside(path, artifact, what)
    check_writable_file(path, what)
    if Path(path).exists() and not append:
        raise CliError(f"{what} {path} already exists; luxc does not overwrite it: remove it "
                       "yourself or choose another name")


def check_checkpoint_dir(path: str, artifact: str) -> None:
    check_outside(path, artifact, "--checkpoint")
    check_writable_directory(path, "--checkpoint")


def checkpoints(directory: str | Path) -> list[Path]:
    """The checkpoints luxc run wrote in ``directory``, oldest step first."""
    d = Path(directory)
    if not d.is_dir():
        return []
    found = [(int(m[1]), p) for p in d.iterdir() if (m := _CHECKPOINT.fullmatch(p.name))
             and is_checkpoint(p)]
    return [p for _, p in sorted(found)]


def checkpoint_path(directory: str | Path, step: int) -> Path:
    return Path(directory) / f"step-{step:08d}.safetensors"


def prune(directory: str | Path, keep: int) -> None:
    """Remove all but the newest ``keep`` checkpoints luxc run wrote (nothing else)."""
    for p in checkpoints(directory)[:-keep]:
        p.unlink(missing_ok=True)
