"""Lux's training API: TrainState, compute_gradients, apply_gradients(_), single_train_step(_)."""

from luxc.training._adjust import adjust as adjust
from luxc.training._adjust import adjust_ as adjust_
from luxc.training._api import apply_gradients as apply_gradients
from luxc.training._api import apply_gradients_ as apply_gradients_
from luxc.training._api import compute_gradients as compute_gradients
from luxc.training._api import compute_objective as compute_objective
from luxc.training._api import single_train_step as single_train_step
from luxc.training._api import single_train_step_ as single_train_step_
from luxc.training._api import train_steps as train_steps
from luxc.training._api import train_steps_ as train_steps_
from luxc.training._backends import AutoEnzyme as AutoEnzyme
from luxc.training._backends import AutoForwardDiff as AutoForwardDiff
from luxc.training._backends import AutoJAX as AutoJAX
from luxc.training._backends import AutoReactant as AutoReactant
from luxc.training._backends import AutoXLA as AutoXLA
from luxc.training._backends import AutoZygote as AutoZygote
from luxc.training._compiled import CompiledStep as CompiledStep
from luxc.training._compiled import compile_step as compile_step
from luxc.training._data_check import NonFiniteDataWarning as NonFiniteDataWarning
from luxc.training._state import ConsumedStateError as ConsumedStateError
from luxc.training._state import TrainState as TrainState
from luxc.training._step import ObjectiveError as ObjectiveError
