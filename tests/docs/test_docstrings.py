"""The examples in docstrings run and print what they say."""

import doctest
import importlib

import jax
import jax.numpy as jnp
import pytest

MODULES = [
    "luxc.autodiff",
    "luxc.losses",
    "luxc.nn._attention",
    "luxc.nn._basic",
    "luxc.nn._bilinear",
    "luxc.nn._compact",
    "luxc.nn._containers",
    "luxc.nn._conv",
    "luxc.nn._conv_transpose",
    "luxc.nn._core",
    "luxc.nn._dropout",
    "luxc.nn._embedding",
    "luxc.nn._group_norm",
    "luxc.nn._maxout",
    "luxc.nn._normalize",
    "luxc.nn._pooling",
    "luxc.nn._positional",
    "luxc.nn._precision",
    "luxc.nn._recurrent",
    "luxc.nn._recurrent_cells",
    "luxc.nn._reshape",
    "luxc.nn._stack",
    "luxc.nn._upsample",
    "luxc.nn._weight_norm",
    "luxc.ops",
    "luxc.runtime.options",
    "luxc.runtime.shown",
    "luxc.runtime.untrusted_options",
    "luxc.training._adjust",
    "luxc.training._api",
    "luxc.training._compiled",
    "luxc.training._microbatch",
    "luxc.training._state",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, extraglobs={"jax": jax, "jnp": jnp}, verbose=False,
                             optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
