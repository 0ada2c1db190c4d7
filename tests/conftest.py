import os
import subprocess
import sys

import jax
import pytest


@pytest.fixture
def key():
    return jax.random.key(0)


def run_python(code: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh Python process (for multi-device and fresh-process checks)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})
