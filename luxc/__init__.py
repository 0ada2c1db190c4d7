"""luxc: Lux.jl's training utilities for JAX, with the whole training step compiled ahead of time.

    ps, st = luxc.setup(key, model)
    ts = luxc.TrainState(model, ps, st, optax.adam(1e-3))
    grads, loss, stats, ts = luxc.training.single_train_step_(luxc.AutoXLA(), luxc.MSELoss(), (x, y), ts)
"""

from . import distributed as distributed
from . import nn as nn
from . import ops as ops
from . import passes as passes
from . import runtime as runtime
from . import training as training
from ._preferences import preference as preference
from ._preferences import set_dispatch_doctor_preferences as set_dispatch_doctor_preferences
from ._preferences import set_preferences as set_preferences
from .checkpoint import load_state as load_state
from .checkpoint import save_state as save_state
from .compiler import CompiledStep as CompiledStep
from .compiler import compile_step as compile_step
from .export import export_step as export_step
from .export import load as load
from .losses import BinaryCrossEntropyLoss as BinaryCrossEntropyLoss
from .losses import BinaryFocalLoss as BinaryFocalLoss
from .losses import CrossEntropyLoss as CrossEntropyLoss
from .losses import DiceCoeffLoss as DiceCoeffLoss
from .losses import FocalLoss as FocalLoss
from .losses import GenericLossFunction as GenericLossFunction
from .losses import HingeLoss as HingeLoss
from .losses import HuberLoss as HuberLoss
from .losses import KLDivergenceLoss as KLDivergenceLoss
from .losses import L1Loss as L1Loss
from .losses import L2Loss as L2Loss
from .losses import MAELoss as MAELoss
from .losses import MSELoss as MSELoss
from .losses import MSLELoss as MSLELoss
from .losses import PoissonLoss as PoissonLoss
from .losses import SiameseContrastiveLoss as SiameseContrastiveLoss
from .losses import SquaredHingeLoss as SquaredHingeLoss
from .nn import StatefulLuxLayer as StatefulLuxLayer
from .nn import Val as Val
from .nn import compact as compact
from .nn import init_fn as init_fn
from .nn import non_trainable as non_trainable
from .nn import parameter_count as parameter_count
from .nn import setup as setup
from .nn import state_count as state_count
from .nn import testmode as testmode
from .nn import trainmode as trainmode
from .nn import update_state as update_state
from .runtime import CompileOptions as CompileOptions
from .runtime import cache_info as cache_info
from .runtime import explain_recompiles as explain_recompiles
from .training import AutoForwardDiff as AutoForwardDiff
from .training import AutoJAX as AutoJAX
from .training import AutoXLA as AutoXLA
from .training import TrainState as TrainState
from .utils import bf16 as bf16
from .utils import f16 as f16
from .utils import f32 as f32
from .utils import f64 as f64
from .utils import match_eltype as match_eltype
from .utils import recursive_add_ as recursive_add_
from .utils import recursive_copyto_ as recursive_copyto_
from .utils import recursive_eltype as recursive_eltype
from .utils import recursive_make_zero as recursive_make_zero
from .utils import recursive_make_zero_ as recursive_make_zero_
from .utils import recursive_map as recursive_map

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lux keeps the training functions in its Training module, and so does luxc; a user who
    # reaches for them at the top level is pointed there instead of left with a bare error.
    if not name.startswith("_") and hasattr(training, name):
        raise AttributeError(f"module 'luxc' has no attribute {name!r}; it lives in luxc.training "
                             f"(Lux's Training module): luxc.training.{name}, or "
                             f"`from luxc.training import {name}`")
    raise AttributeError(f"module 'luxc' has no attribute {name!r}")
