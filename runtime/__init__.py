"""Compile (XLA through PJRT via jax), cache, execute, and save/load compiled artifacts.

One subpackage a concept: ``compiling`` (options, trace → passes → XLA, stages), ``caching``
(the executable cache, the persistent cache), ``artifacts`` (artifacts and checkpoints on
disk), ``trust`` (signatures and running what this user did not sign), ``files`` (bounded
reads, atomic writes), ``performance`` (op profiles, FLOPs, host memory), ``data`` (datasets of
``.npy`` files) and ``messages`` (the user's words). ``_jax_internal`` holds every jax internal.
The names below are the public surface; modules with a leading ``_`` are internal."""

from luxc.runtime.artifacts import LoadedStep as LoadedStep
from luxc.runtime.artifacts import Manifest as Manifest
from luxc.runtime.artifacts import Predictor as Predictor
from luxc.runtime.caching import DEFAULT_MAX_ENTRIES as DEFAULT_MAX_ENTRIES
from luxc.runtime.caching import CacheInfo as CacheInfo
from luxc.runtime.caching import ExecutableCache as ExecutableCache
from luxc.runtime.caching import NewObjectiveWarning as NewObjectiveWarning
from luxc.runtime.caching import RecompileError as RecompileError
from luxc.runtime.caching import RecompileWarning as RecompileWarning
from luxc.runtime.caching import cache_info as cache_info
from luxc.runtime.caching import explain_recompiles as explain_recompiles
from luxc.runtime.caching import persistent_cache as persistent_cache
from luxc.runtime.compiling import AutotuneReport as AutotuneReport
from luxc.runtime.compiling import CompiledStages as CompiledStages
from luxc.runtime.compiling import CompileOptions as CompileOptions
from luxc.runtime.compiling import DonationWarning as DonationWarning
from luxc.runtime.compiling import Executable as Executable
from luxc.runtime.data import Dataset as Dataset
from luxc.runtime.files import ArtifactError as ArtifactError
from luxc.runtime.files import WriteError as WriteError
from luxc.runtime.performance import OpRecord as OpRecord
from luxc.runtime.performance import RetainedMemory as RetainedMemory
from luxc.runtime.performance import retain_host_memory as retain_host_memory
from luxc.runtime.trust import StepInterrupted as StepInterrupted
from luxc.runtime.trust import TimeLimitExceeded as TimeLimitExceeded

__all__ = [
    "DEFAULT_MAX_ENTRIES", "ArtifactError", "AutotuneReport", "CacheInfo", "CompileOptions",
    "CompiledStages", "Dataset", "DonationWarning", "Executable", "ExecutableCache",
    "LoadedStep", "Manifest", "NewObjectiveWarning", "OpRecord", "Predictor", "RecompileError",
    "RecompileWarning", "RetainedMemory", "StepInterrupted", "TimeLimitExceeded", "WriteError",
    "cache_info", "explain_recompiles", "persistent_cache", "retain_host_memory",
]
