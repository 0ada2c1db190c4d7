"""The examples in docstrings run and print what they say: every module with examples, once."""

import pytest

from tests.docs._examples import run_docstring_examples

MODULES = [
    "luxc._preferences",
    "luxc.autodiff",
    "luxc.distributed",
    "luxc.losses",
    "luxc.nn._adapters",
    "luxc.nn._attention",
    "luxc.nn._basic",
    "luxc.nn._bilinear",
    "luxc.nn._compact",
    "luxc.nn._containers",
    "luxc.nn._conv",
    "luxc.nn._conv_transpose",
    "luxc.nn._core",
    "luxc.nn._dropout",
    "luxc.nn._eltype",
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
    "luxc.nn._stateful",
    "luxc.nn._upsample",
    "luxc.nn._weight_norm",
    "luxc.ops",
    "luxc.passes",
    "luxc.runtime.compiling._options",
    "luxc.runtime.messages._shown",
    "luxc.runtime.trust._untrusted_options",
    "luxc.training._adjust",
    "luxc.training._api",
    "luxc.training._compiled",
    "luxc.training._microbatch",
    "luxc.training._state",
    "luxc.utils",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name, prefs):
    # ``prefs``: the preferences' examples start from the defaults, whatever ran before.
    result = run_docstring_examples(name)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
