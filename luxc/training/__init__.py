"""Lux's training API: TrainState, compute_gradients, apply_gradients(_), single_train_step(_)."""

from ._adjust import adjust as adjust
from ._adjust import adjust_ as adjust_
from ._api import apply_gradients as apply_gradients
from ._api import apply_gradients_ as apply_gradients_
from ._api import compute_gradients as compute_gradients
from ._api import compute_objective as compute_objective
from ._api import single_train_step as single_train_step
from ._api import single_train_step_ as single_train_step_
from ._backends import AutoForwardDiff as AutoForwardDiff
from ._backends import AutoJAX as AutoJAX
from ._backends import AutoXLA as AutoXLA
from ._state import ConsumedStateError as ConsumedStateError
from ._state import TrainState as TrainState
from ._step import ObjectiveError as ObjectiveError
