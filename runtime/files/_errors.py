"""The error classes of luxc's files on disk."""


class ArtifactError(RuntimeError):
    """A file luxc wrote cannot be used: missing, corrupt, tampered with or incompatible."""


class WriteError(ArtifactError, OSError):
    """A file luxc writes could not be written (a full disk, a file size limit): the message
    names the file; what was there before is kept. Still an ``OSError`` for callers that treat
    any failed write alike."""

    def __init__(self, message: str, errno: int | None = None):
        super().__init__(message)
        self.errno = errno
