"""The examples in docstrings run and print what they say."""

import doctest
import importlib

import jax
import jax.numpy as jnp
import pytest

MODULES = ["luxc.nn._core", "luxc.nn._compact", "luxc.nn._embedding",
           "luxc.nn._attention", "luxc.nn._containers", "luxc.nn._recurrent", "luxc.nn._recurrent_cells", "luxc.nn._stack", "luxc.training._microbatch", "luxc.training._state", "luxc.training._compiled",
           "luxc.training._api",
           "luxc.runtime.options", "luxc.runtime.shown", "luxc.runtime.untrusted_options",
           "luxc.losses", "luxc.ops"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, extraglobs={"jax": jax, "jnp": jnp}, verbose=False,
                             optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
