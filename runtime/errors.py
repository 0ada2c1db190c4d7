"""The one error class of luxc's files on disk."""


class ArtifactError(RuntimeError):
    """A file luxc wrote cannot be used: missing, corrupt, tampered with or incompatible."""
