"""The compiled programs a process keeps: the ``ExecutableCache`` of a ``TrainState`` (program
keys, input signatures, the recompile policy and its reasons in the user's words) and the
persistent compilation cache on disk, which another process reads instead of compiling again."""

from luxc.runtime.caching import persistent_cache as persistent_cache
from luxc.runtime.caching._executable_cache import DEFAULT_MAX_ENTRIES as DEFAULT_MAX_ENTRIES
from luxc.runtime.caching._executable_cache import CacheInfo as CacheInfo
from luxc.runtime.caching._executable_cache import ExecutableCache as ExecutableCache
from luxc.runtime.caching._executable_cache import RecompileError as RecompileError
from luxc.runtime.caching._executable_cache import RecompileWarning as RecompileWarning
from luxc.runtime.caching._executable_cache import cache_info as cache_info
from luxc.runtime.caching._executable_cache import explain_recompiles as explain_recompiles
from luxc.runtime.caching._programs import NewObjectiveWarning as NewObjectiveWarning

__all__ = ["DEFAULT_MAX_ENTRIES", "CacheInfo", "ExecutableCache", "NewObjectiveWarning",
           "RecompileError", "RecompileWarning", "cache_info", "explain_recompiles",
           "persistent_cache"]
