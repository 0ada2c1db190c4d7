"""Fixtures every test directory shares (helpers to import live in ``tests/support.py``)."""

import os
import signal

import jax
import pytest

import luxc


def pytest_configure(config):
    """Give the processes the tests start a working Ctrl-C, however pytest itself was started.

    A shell without job control starts ``cmd &`` with SIGINT ignored, and an ignored signal stays
    ignored across ``exec``: every ``luxc`` the Ctrl-C tests start would then ignore the SIGINT
    they send and the tests would time out. Python's own handler is reset to the default on
    ``exec``, so the children start as they would from a terminal.
    """
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True, scope="session")
def private_luxc_key(tmp_path_factory):
    """Every test (and every process it starts) signs with a key of its own, never the user's."""
    os.environ["LUXC_KEY_FILE"] = str(tmp_path_factory.mktemp("luxc-key") / "key")
    yield
    os.environ.pop("LUXC_KEY_FILE", None)


@pytest.fixture
def key():
    return jax.random.key(0)


@pytest.fixture
def prefs(monkeypatch):
    """Lux's preferences at their defaults (no file read yet, no environment override, no
    eltype warning given yet); returns ``luxc.set_preferences``."""
    monkeypatch.setattr(luxc._preferences, "_values", None)
    monkeypatch.setattr(luxc.nn._eltype, "_warned", set())
    for name in ("ELTYPE_MISMATCH_HANDLING", "INSTABILITY_CHECK_LUXCORE", "INSTABILITY_CHECK_LUXLIB"):
        monkeypatch.delenv(f"LUXC_{name}", raising=False)
    return luxc.set_preferences
