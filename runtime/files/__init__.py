"""luxc's files on the file system: bounded reads, atomic writes, directories replaced in one
step, temporary names (and removing those a killed writer left), and the error classes of a
file that cannot be used or written."""

from luxc.runtime.files._errors import ArtifactError as ArtifactError
from luxc.runtime.files._errors import WriteError as WriteError

__all__ = ["ArtifactError", "WriteError"]
