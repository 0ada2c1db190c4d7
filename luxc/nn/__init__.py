"""Layers in the LuxCore style: ``ps, st = setup(key, layer)``; ``y, st = layer(x, ps, st)``."""

from ._basic import Chain as Chain
from ._basic import Dense as Dense
from ._basic import FlattenLayer as FlattenLayer
from ._basic import WrappedFunction as WrappedFunction
from ._compact import CompactLayer as CompactLayer
from ._compact import compact as compact
from ._compact import init_fn as init_fn
from ._compact import non_trainable as non_trainable
from ._conv import Conv as Conv
from ._conv import MaxPool as MaxPool
from ._core import AbstractContainerLayer as AbstractContainerLayer
from ._core import AbstractLayer as AbstractLayer
from ._core import LayerShapeError as LayerShapeError
from ._core import Val as Val
from ._core import apply as apply
from ._core import parameter_count as parameter_count
from ._core import setup as setup
from ._core import state_count as state_count
from ._core import testmode as testmode
from ._core import trainmode as trainmode
from ._dropout import Dropout as Dropout
from ._normalize import BatchNorm as BatchNorm
from ._normalize import LayerNorm as LayerNorm
from ._stateful import StatefulLuxLayer as StatefulLuxLayer
