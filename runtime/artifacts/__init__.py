"""What luxc writes to disk and reads back: the artifact directory (its format and manifest,
a sharded step's mesh, saving and loading), the step and the forward pass loaded from one, and
the checkpoint file; arrays in both are safetensors bytes, checked on read."""

from luxc.runtime.artifacts._loaded_step import LoadedStep as LoadedStep
from luxc.runtime.artifacts._loaded_step import Predictor as Predictor
from luxc.runtime.artifacts._manifest import ArraySpec as ArraySpec
from luxc.runtime.artifacts._manifest import FileEntry as FileEntry
from luxc.runtime.artifacts._manifest import Layout as Layout
from luxc.runtime.artifacts._manifest import Manifest as Manifest
from luxc.runtime.artifacts._manifest import ProgramSpec as ProgramSpec
from luxc.runtime.artifacts._manifest import StoredOptions as StoredOptions

__all__ = ["ArraySpec", "FileEntry", "Layout", "LoadedStep", "Manifest", "Predictor",
           "ProgramSpec", "StoredOptions"]
