"""Compile (XLA through PJRT via jax), cache, execute, and save/load compiled artefacts."""

from . import persistent_cache as persistent_cache
from .cache import CacheInfo as CacheInfo
from .cache import ExecutableCache as ExecutableCache
from .cache import RecompileError as RecompileError
from .cache import RecompileWarning as RecompileWarning
from .cache import cache_info as cache_info
from .cache import explain_recompiles as explain_recompiles
from .executable import DonationWarning as DonationWarning
from .executable import Executable as Executable
from .options import CompileOptions as CompileOptions
