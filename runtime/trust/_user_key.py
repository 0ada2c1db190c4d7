"""Who made a file: the per-user key that authenticates what luxc itself wrote.

luxc loads two kinds of bytes from disk. *Data* — portable StableHLO, tensors, JSON — is parsed
and compiled by jax and XLA; parsing it runs none of its author's code, so it may come from
anyone (it is still checked for integrity). A *serialized executable* — an artifact's
``executable.bin``, an entry of the persistent compilation cache — is native code: loading it
runs whatever it contains. luxc loads one only when it carries an HMAC-SHA256 made with this
user's key, i.e. when this user's luxc wrote it.

The key is 32 random bytes in ``$LUXC_KEY_FILE``, else ``$XDG_CONFIG_HOME/luxc/key``, else
``~/.config/luxc/key``, created on first use with mode 0600 in a 0700 directory. A key file that
another user owns or others can read or write is not used (nothing is authenticated then, and
:func:`key_problem` says why), so a copied or shared key never makes foreign code look like ours.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path

from luxc.runtime.files._temporary_names import remove_stale_temporaries, temporary_name

KEY_BYTES = 32


class KeyUnavailable(RuntimeError):
    """This user's key cannot be used: nothing can be authenticated."""


def key_path() -> Path:
    if os.environ.get("LUXC_KEY_FILE"):
        return Path(os.environ["LUXC_KEY_FILE"])
    config = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(config) / "luxc" / "key"


def _read_key(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise KeyUnavailable(f"the luxc key {path} is not a regular file")
        if info.st_uid != os.getuid():
            raise KeyUnavailable(f"the luxc key {path} belongs to another user (uid {info.st_uid})")
        if info.st_mode & 0o077:
            raise KeyUnavailable(f"the luxc key {path} is readable or writable by others (mode "
                                 f"{stat.S_IMODE(info.st_mode):o}); run chmod 600 {path}")
        key = os.read(fd, KEY_BYTES + 1)
    finally:
        os.close(fd)
    if len(key) != KEY_BYTES:
        raise KeyUnavailable(f"the luxc key {path} is damaged ({len(key)} bytes, expected "
                             f"{KEY_BYTES}); delete it and luxc makes a new one")
    return key


def _create_key(path: Path) -> None:
    # Written in full under a private name, then linked into place: another process starting
    # at the same moment sees no key or the whole key, never a partial one.
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = temporary_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, secrets.token_bytes(KEY_BYTES))
        os.fsync(fd)
        os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process made it first: use theirs
    finally:
        tmp.unlink(missing_ok=True)


def user_key(*, create: bool = True) -> bytes:
    """This user's key, created on first use unless ``create=False``. Raises
    :class:`KeyUnavailable`."""
    path = key_path()
    try:
        return _read_key(path)
    except FileNotFoundError:
        if not create:
            raise KeyUnavailable(f"there is no luxc key at {path} yet") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise KeyUnavailable(f"the luxc key {path} is a symbolic link; luxc refuses it") from None
        raise KeyUnavailable(f"cannot read the luxc key {path}: {e.strerror}") from None
    try:
        _create_key(path)
        return _read_key(path)
    except OSError as e:
        raise KeyUnavailable(f"cannot create the luxc key {path}: {e.strerror}") from None


def key_problem() -> str | None:
    """Why this user's key cannot be used, or ``None`` when it can (never creates one)."""
    try:
        user_key(create=False)
    except KeyUnavailable as e:
        return str(e)
    return None


def sign(domain: str, *parts: bytes, create_key: bool = True) -> str:
    """HMAC-SHA256 (hex) of ``parts`` under this user's key, separated by ``domain`` so that a
    tag made for one purpose (an artifact manifest) never verifies for another (a cache entry)."""
    mac = hmac.new(user_key(create=create_key), domain.encode() + b"\0", hashlib.sha256)
    for part in parts:
        mac.update(len(part).to_bytes(8, "little"))  # unambiguous framing of the parts
        mac.update(part)
    return mac.hexdigest()


def verify(tag: str | bytes, domain: str, *parts: bytes) -> bool:
    """Whether ``tag`` is :func:`sign` of ``parts`` (constant time; ``False`` without a key —
    checking never creates one)."""
    if isinstance(tag, bytes | bytearray):
        try:
            tag = tag.decode("ascii")
        except UnicodeDecodeError:
            return False
    try:
        expected = sign(domain, *parts, create_key=False)
    except KeyUnavailable:
        return False
    return hmac.compare_digest(expected, tag.strip())


def shared_directory_problem(path: Path) -> str | None:
    """Why files in directory ``path`` could have been put there by someone else: it is owned
    by another user or writable by group/others. ``None`` when only this user can write it."""
    try:
        info = os.stat(path)
    except OSError as e:
        return f"{path} cannot be examined ({e.strerror})"
    if info.st_uid != os.getuid():
        return f"{path} belongs to another user (uid {info.st_uid})"
    if info.st_mode & 0o022:
        return (f"{path} can be written by other users (mode {stat.S_IMODE(info.st_mode):o}); "
                f"run chmod go-w {path}")
    return None
