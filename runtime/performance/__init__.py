"""Where a step's time goes and what it costs the host: per-op time from XLA's own trace
events, FLOPs counted from the optimised HLO, and keeping the host memory a step frees so the
next step does not fault it in again."""

from luxc.runtime.performance._host_memory import RetainedMemory as RetainedMemory
from luxc.runtime.performance._host_memory import retain_host_memory as retain_host_memory
from luxc.runtime.performance._op_profile import OpRecord as OpRecord

__all__ = ["OpRecord", "RetainedMemory", "retain_host_memory"]
