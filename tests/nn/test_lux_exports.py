"""Every layer Lux.jl exports is in luxc.nn under its name, and in the docs' one Lux table.

The names are the layer exports of Lux.jl's ``src/Lux.jl`` at 6f4b96c (its ``export`` lines from
``Chain, Parallel, ...`` to ``RNNCell, ... BidirectionalRNN``, the ``SamePad, TimeLastIndex,
BatchLastIndex`` helpers and the two rotary functions).
"""

import importlib.util

import pytest

from luxc import nn
from tests.support import ROOT

LUX_LAYER_EXPORTS = """
Chain Parallel SkipConnection PairwiseFusion BranchLayer Maxout RepeatedLayer
Bilinear Dense Scale AlternatePrecision
Embedding SinusoidalPositionalEmbedding RotaryPositionalEmbedding
Conv ConvTranspose Upsample PixelShuffle
MaxPool MeanPool LPPool GlobalMaxPool GlobalMeanPool GlobalLPPool
AdaptiveMaxPool AdaptiveMeanPool AdaptiveLPPool
AlphaDropout Dropout VariationalHiddenDropout
BatchNorm GroupNorm InstanceNorm LayerNorm RMSNorm WeightNorm
MultiHeadAttention
NoOpLayer ReshapeLayer SelectDim FlattenLayer WrappedFunction ReverseSequence
RNNCell LSTMCell GRUCell Recurrence StatefulRecurrentCell BidirectionalRNN
""".split()
LUX_HELPERS = ["SamePad", "TimeLastIndex", "BatchLastIndex", "apply_rotary_embedding",
               "compute_rotary_embedding_params"]


def test_lux_exports_49_layers():
    assert len(LUX_LAYER_EXPORTS) == len(set(LUX_LAYER_EXPORTS)) == 49


@pytest.mark.parametrize("name", LUX_LAYER_EXPORTS + LUX_HELPERS)
def test_every_lux_export_is_in_luxc_nn(name):
    assert hasattr(nn, name), f"luxc.nn has no {name}"


def _assembled_table() -> str:
    spec = importlib.util.spec_from_file_location("lux_table", ROOT / "docs/_hooks/lux_table.py")
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    return hook.assembled(ROOT / "docs" / "layers")


def test_every_lux_layer_has_a_row_in_the_docs_lux_table():
    rows = _assembled_table().splitlines()[2:]
    first_cells = [row.split("|")[1] for row in rows]
    missing = [n for n in LUX_LAYER_EXPORTS
               if not any(f"`{n}(" in cell or f"`{n}`" in cell for cell in first_cells)]
    assert missing == [], f"no row in docs/layers/*.md's Lux tables for {missing}"
