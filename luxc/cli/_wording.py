"""Runtime errors in the CLI's words.

The runtime speaks to Python callers: its errors name the argument they pass
(``allow_unchecked_native_calls=True``, ``force=True``, ``platforms=['cpu']``). A user of the
command line typed flags instead, so every error the CLI prints goes through :func:`cli_words`,
which names the flag for each such argument. The table is the one place the two vocabularies
meet: a runtime error that names a new argument adds its row here (tests/test_cli_wording.py
checks each row against the error that raises it).
"""

from __future__ import annotations

import re

# (the runtime's words, the CLI's): each a regular expression and its replacement.
_FLAGS: tuple[tuple[re.Pattern[str], str], ...] = tuple((re.compile(p), r) for p, r in (
    (r"pass allow_unchecked_native_calls=True\b", "pass --allow-unchecked-native-calls"),
    (r"pass allow_device_kernels=True to luxc\.load\b",
     "pass --allow-device-kernels (luxc.load(..., allow_device_kernels=True))"),
    (r"\(follow_symlinks=True:", "(--follow-symlinks:"),
    (r"\(max_memory=, in bytes\)", "(--max-data-memory MiB)"),
    (r"\bout=('[^']*'|\"[^\"]*\") names no new directory; give the artifact a directory name, "
     r"e\.g\. out='step\.luxc'",
     r"--out \1 names no new directory; give the artifact a directory name, e.g. --out step.luxc"),
    (r"choose another out, or pass force=True\b", "choose another --out, or pass --force"),
    (r"so choose another out\b", "so choose another --out"),
    (r"\bout's parent directory ", "--out parent "),
    (r"recompile it with platforms=\['([\w-]+)'\]", r"recompile it with --platform \1"),
    (r"\(mesh ([^)]*)\)", r"(--mesh \1)"),
    (r"compile it again without a mesh\b", "compile it again without --mesh"),
    (r"export the step again on this machine \(luxc\.export_step\)",
     "compile the step again on this machine (luxc compile)"),
))


def cli_words(message: str) -> str:
    """``message`` (a runtime error's) with each Python argument it names given as the flag."""
    for pattern, flag in _FLAGS:
        message = pattern.sub(flag, message)
    return message
