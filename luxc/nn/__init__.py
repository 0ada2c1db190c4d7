"""Layers in the LuxCore style: ``ps, st = setup(key, layer)``; ``y, st = layer(x, ps, st)``."""

from luxc.nn._adapters import FromEquinox as FromEquinox
from luxc.nn._adapters import FromFlax as FromFlax
from luxc.nn._attention import MultiHeadAttention as MultiHeadAttention
from luxc.nn._basic import Chain as Chain
from luxc.nn._basic import Dense as Dense
from luxc.nn._basic import FlattenLayer as FlattenLayer
from luxc.nn._basic import WrappedFunction as WrappedFunction
from luxc.nn._compact import CompactLayer as CompactLayer
from luxc.nn._compact import compact as compact
from luxc.nn._compact import init_fn as init_fn
from luxc.nn._compact import non_trainable as non_trainable
from luxc.nn._containers import Parallel as Parallel
from luxc.nn._containers import SkipConnection as SkipConnection
from luxc.nn._conv import Conv as Conv
from luxc.nn._conv import MaxPool as MaxPool
from luxc.nn._core import AbstractContainerLayer as AbstractContainerLayer
from luxc.nn._core import AbstractLayer as AbstractLayer
from luxc.nn._core import LayerShapeError as LayerShapeError
from luxc.nn._core import Val as Val
from luxc.nn._core import apply as apply
from luxc.nn._core import parameter_count as parameter_count
from luxc.nn._core import setup as setup
from luxc.nn._core import state_count as state_count
from luxc.nn._dropout import Dropout as Dropout
from luxc.nn._eltype import EltypeMismatchError as EltypeMismatchError
from luxc.nn._embedding import Embedding as Embedding
from luxc.nn._normalize import BatchNorm as BatchNorm
from luxc.nn._normalize import LayerNorm as LayerNorm
from luxc.nn._stability import TypeInstabilityError as TypeInstabilityError
from luxc.nn._stack import POLICY_NAMES as POLICY_NAMES
from luxc.nn._stack import Remat as Remat
from luxc.nn._stack import RepeatedLayer as RepeatedLayer
from luxc.nn._stack import Stack as Stack
from luxc.nn._stack import stacked_axes as stacked_axes
from luxc.nn._stateful import StatefulLuxLayer as StatefulLuxLayer
from luxc.nn._stateful import testmode as testmode
from luxc.nn._stateful import trainmode as trainmode
from luxc.nn._stateful import update_state as update_state

# isort: split
# Lux's normalisation layers and the simple remaining ones (issue 30, layers-norm).
from luxc.nn._bilinear import Bilinear as Bilinear
from luxc.nn._bilinear import Scale as Scale
from luxc.nn._dropout import AlphaDropout as AlphaDropout
from luxc.nn._dropout import VariationalHiddenDropout as VariationalHiddenDropout
from luxc.nn._group_norm import GroupNorm as GroupNorm
from luxc.nn._group_norm import InstanceNorm as InstanceNorm
from luxc.nn._maxout import Maxout as Maxout
from luxc.nn._normalize import RMSNorm as RMSNorm
from luxc.nn._precision import AlternatePrecision as AlternatePrecision
from luxc.nn._reshape import NoOpLayer as NoOpLayer
from luxc.nn._reshape import ReshapeLayer as ReshapeLayer
from luxc.nn._reshape import SelectDim as SelectDim
from luxc.nn._weight_norm import WeightNorm as WeightNorm
