"""From a pure step function to an XLA executable: the options a user can change
(``CompileOptions``), tracing, the passes and XLA's compile (``Executable``), autotuning, what a
StableHLO module contains, and what every compiled object says about itself
(``CompiledStages``: ``as_text``, ``cost_analysis``, ``memory_analysis``)."""

from luxc.runtime.compiling._autotune import AutotuneReport as AutotuneReport
from luxc.runtime.compiling._executable import DonationWarning as DonationWarning
from luxc.runtime.compiling._executable import Executable as Executable
from luxc.runtime.compiling._options import CompileOptions as CompileOptions
from luxc.runtime.compiling._stages import CompiledStages as CompiledStages

__all__ = ["AutotuneReport", "CompileOptions", "CompiledStages", "DonationWarning", "Executable"]
