"""Training data for an artifact's step: ``.npy`` files read by rows (headers checked, never
memory-mapped or unpickled) and drawn as shuffled batches."""

from luxc.runtime.data._dataset import Dataset as Dataset

__all__ = ["Dataset"]
