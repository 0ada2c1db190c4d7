"""The one runner of documented examples: a docstring's ``>>>`` lines and a page's Python blocks
are compared with what they print the same way, as doctest compares (``...`` matches anything,
white space is folded).

``tests/docs/test_docstrings.py`` runs every module's docstring examples through
``run_docstring_examples``; ``tests/docs/test_markdown_blocks.py`` compares each page block's
output with ``output_matches``."""

import doctest
import importlib

import jax
import jax.numpy as jnp

FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def run_docstring_examples(name: str) -> doctest.TestResults:
    """Run the examples in the docstrings of module ``name`` (with ``jax`` and ``jnp`` in scope,
    as the docs' pages have them): how many ran and how many printed something else."""
    module = importlib.import_module(name)
    return doctest.testmod(module, extraglobs={"jax": jax, "jnp": jnp}, verbose=False,
                           optionflags=FLAGS)


def output_matches(expected: str, printed: str) -> bool:
    """Whether ``printed`` is what a page shows as ``expected``."""
    return doctest.OutputChecker().check_output(expected, printed, FLAGS)
