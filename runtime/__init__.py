"""Compile (XLA through PJRT via jax), cache, execute, and save/load compiled artefacts."""

from luxc.runtime import persistent_cache as persistent_cache
from luxc.runtime.autotune import AutotuneReport as AutotuneReport
from luxc.runtime.cache import DEFAULT_MAX_ENTRIES as DEFAULT_MAX_ENTRIES
from luxc.runtime.cache import CacheInfo as CacheInfo
from luxc.runtime.cache import ExecutableCache as ExecutableCache
from luxc.runtime.cache import RecompileError as RecompileError
from luxc.runtime.cache import RecompileWarning as RecompileWarning
from luxc.runtime.cache import cache_info as cache_info
from luxc.runtime.cache import explain_recompiles as explain_recompiles
from luxc.runtime.executable import DonationWarning as DonationWarning
from luxc.runtime.executable import Executable as Executable
from luxc.runtime.host_memory import RetainedMemory as RetainedMemory
from luxc.runtime.host_memory import retain_host_memory as retain_host_memory
from luxc.runtime.op_profile import OpRecord as OpRecord
from luxc.runtime.options import CompileOptions as CompileOptions
from luxc.runtime.programs import NewObjectiveWarning as NewObjectiveWarning
from luxc.runtime.stages import CompiledStages as CompiledStages
