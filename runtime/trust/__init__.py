"""What luxc trusts: the per-user key that signs what luxc itself wrote, and everything done to
a file this user did not sign before it runs: its StableHLO checked in an isolated child, its
native calls and XLA options restricted, its steps run where Ctrl-C and a time limit stop them."""

from luxc.runtime.trust._guarded_call import StepInterrupted as StepInterrupted
from luxc.runtime.trust._guarded_call import TimeLimitExceeded as TimeLimitExceeded
from luxc.runtime.trust._user_key import KeyUnavailable as KeyUnavailable

__all__ = ["KeyUnavailable", "StepInterrupted", "TimeLimitExceeded"]
