"""What ``luxc run`` writes besides the terminal: checked before any step, written safely.

Every output is refused inside the artifact it runs (it would destroy it); an existing file is
replaced only when it is a luxc checkpoint (luxc never overwrites what it did not write). The
``--checkpoint`` directory is :mod:`luxc.cli.run_checkpoints`'s, the ``--log`` file
:mod:`luxc.cli.run_log`'s.
"""

from __future__ import annotations

import re
from pathlib import Path

from luxc.cli._common import CliError
from luxc.runtime.artifacts._checkpoint_format import is_checkpoint
from luxc.runtime.files._atomic_write import check_writable_file


def resolved(path: str | Path, what: str) -> Path:
    """``path`` absolute, every link followed; a link loop is one line naming ``what``."""
    try:
        return Path(path).absolute().resolve()
    except RuntimeError:  # Python's word for a symbolic-link loop
        raise CliError(f"{what} {path} is a symbolic link that leads back to itself; remove it "
                       "or give another name") from None


def check_outside(path: str | Path, artifact: str | Path, what: str) -> None:
    """Refuse ``path`` inside the artifact directory (or the directory itself)."""
    target, art = resolved(path, what), Path(artifact).absolute().resolve()
    if target == art or art in target.parents:
        raise CliError(f"{what} {path} is inside the artifact {artifact}, which it would "
                       "destroy; write it elsewhere")


def check_state_file(path: str, artifact: str, what: str) -> None:
    """An output a checkpoint is written to: outside the artifact, writable, and either new or
    a luxc checkpoint already."""
    check_outside(path, artifact, what)
    check_writable_file(path, what)
    if Path(path).exists() and not is_checkpoint(path):
        raise CliError(f"{what} {path} exists and is not a luxc checkpoint; luxc does not "
                       "overwrite it: remove it yourself or choose another name")


def check_new_file(path: str, artifact: str, what: str, append: bool = False) -> None:
    """An output luxc creates (a log, a plot): outside the artifact, writable, not existing
    (unless ``append``)."""
    check_outside(path, artifact, what)
    check_writable_file(path, what)
    if Path(path).exists() and not append:
        raise CliError(f"{what} {path} already exists; luxc does not overwrite it: remove it "
                       "yourself or choose another name")


def check_distinct(files: dict[str, str | None], checkpoint_dir: str | None) -> None:
    """Refuse two outputs of one run given the same file (``{"--log": path, ...}``; the one
    written last would replace the other: ``--log F --save-state F`` lost the log), and an
    output the ``--checkpoint`` directory manages (named like a checkpoint, or its lock)."""
    seen: dict[Path, str] = {}
    for what, path in files.items():
        if not path:
            continue
        target = resolved(path, what)
        if target in seen:
            raise CliError(f"{what} {path} is the file given to {seen[target]}; the one written "
                           "last would replace the other: give each its own file")
        seen[target] = what
        if checkpoint_dir and target.parent == Path(checkpoint_dir).absolute().resolve() and \
                (target.name == ".luxc-run.lock" or
                 re.fullmatch(r"step-\d{8,}\.safetensors", target.name)):
            raise CliError(f"{what} {path} is a name the --checkpoint directory {checkpoint_dir} "
                           "uses for its checkpoints; give a file outside it or another name")
