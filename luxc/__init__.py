"""luxc: Lux.jl's training utilities for JAX, with the whole training step compiled ahead of time.

    ps, st = luxc.setup(key, model)
    ts = luxc.TrainState(model, ps, st, optax.adam(1e-3))
    grads, loss, stats, ts = luxc.training.single_train_step_(luxc.AutoXLA(), luxc.MSELoss(), (x, y), ts)
"""

from luxc import distributed as distributed
from luxc import nn as nn
from luxc import ops as ops
from luxc import passes as passes
from luxc import runtime as runtime
from luxc import training as training
from luxc._preferences import preference as preference
from luxc._preferences import set_dispatch_doctor_preferences as set_dispatch_doctor_preferences
from luxc._preferences import set_preferences as set_preferences

# Lux's autodiff helpers and the ADTypes names of the backends (porting aids), round 4
from luxc.autodiff import batched_jacobian as batched_jacobian
from luxc.autodiff import jacobian_vector_product as jacobian_vector_product
from luxc.autodiff import vector_jacobian_product as vector_jacobian_product
from luxc.checkpoint import load_state as load_state
from luxc.checkpoint import save_state as save_state
from luxc.export import export_step as export_step
from luxc.export import load as load
from luxc.losses import BinaryCrossEntropyLoss as BinaryCrossEntropyLoss
from luxc.losses import BinaryFocalLoss as BinaryFocalLoss
from luxc.losses import CrossEntropyLoss as CrossEntropyLoss
from luxc.losses import DiceCoeffLoss as DiceCoeffLoss
from luxc.losses import FocalLoss as FocalLoss
from luxc.losses import GenericLossFunction as GenericLossFunction
from luxc.losses import HingeLoss as HingeLoss
from luxc.losses import HuberLoss as HuberLoss
from luxc.losses import KLDivergenceLoss as KLDivergenceLoss
from luxc.losses import L1Loss as L1Loss
from luxc.losses import L2Loss as L2Loss
from luxc.losses import MAELoss as MAELoss
from luxc.losses import MSELoss as MSELoss
from luxc.losses import MSLELoss as MSLELoss
from luxc.losses import PoissonLoss as PoissonLoss
from luxc.losses import SiameseContrastiveLoss as SiameseContrastiveLoss
from luxc.losses import SquaredHingeLoss as SquaredHingeLoss
from luxc.nn import StatefulLuxLayer as StatefulLuxLayer
from luxc.nn import Val as Val
from luxc.nn import compact as compact
from luxc.nn import init_fn as init_fn
from luxc.nn import non_trainable as non_trainable
from luxc.nn import parameter_count as parameter_count
from luxc.nn import setup as setup
from luxc.nn import state_count as state_count
from luxc.nn import testmode as testmode
from luxc.nn import trainmode as trainmode
from luxc.nn import update_state as update_state
from luxc.runtime import CompileOptions as CompileOptions
from luxc.runtime import cache_info as cache_info
from luxc.runtime import explain_recompiles as explain_recompiles
from luxc.runtime import retain_host_memory as retain_host_memory
from luxc.training import AutoEnzyme as AutoEnzyme
from luxc.training import AutoForwardDiff as AutoForwardDiff
from luxc.training import AutoJAX as AutoJAX
from luxc.training import AutoReactant as AutoReactant
from luxc.training import AutoXLA as AutoXLA
from luxc.training import AutoZygote as AutoZygote
from luxc.training import CompiledStep as CompiledStep
from luxc.training import TrainState as TrainState
from luxc.training import compile_step as compile_step
from luxc.utils import bf16 as bf16
from luxc.utils import f16 as f16
from luxc.utils import f32 as f32
from luxc.utils import f64 as f64
from luxc.utils import match_eltype as match_eltype
from luxc.utils import recursive_add_ as recursive_add_
from luxc.utils import recursive_copyto_ as recursive_copyto_
from luxc.utils import recursive_eltype as recursive_eltype
from luxc.utils import recursive_make_zero as recursive_make_zero
from luxc.utils import recursive_make_zero_ as recursive_make_zero_
from luxc.utils import recursive_map as recursive_map

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lux keeps the training functions in its Training module, and so does luxc; a user who
    # reaches for them at the top level is pointed there instead of left with a bare error.
    if not name.startswith("_") and hasattr(training, name):
        raise AttributeError(f"module 'luxc' has no attribute {name!r}; it lives in luxc.training "
                             f"(Lux's Training module): luxc.training.{name}, or "
                             f"`from luxc.training import {name}`")
    raise AttributeError(f"module 'luxc' has no attribute {name!r}")
