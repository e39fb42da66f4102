"""One job per state directory: an exclusive lock held for the life of a run.

Two runs on one directory would each write tokens.json, checkpoints and the MLflow
journal; the second's tokens lock the first job's clients out. The lock is `flock` on
`flotilla.lock` in the directory, so it dies with its holder (no stale lock after a
crash or SIGKILL). The file holds the holder's pid, to name it to whoever is refused.

`flotilla run` takes the lock and hands it to its aggregator (an inherited descriptor,
named in FLOTILLA_STATE_LOCK_FD); `flotilla aggregator` started alone takes it itself.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_FILE = "flotilla.lock"
INHERITED_FD_ENV = "FLOTILLA_STATE_LOCK_FD"


class StateDirBusy(Exception):
    """Another process holds the state directory; the message names it and its pid."""

    def __init__(self, directory: Path, holder: str) -> None:
        super().__init__(
            f"state directory {directory} is in use by process {holder} (another flotilla "
            "run or aggregator): wait for it to end, stop it, or use another --state-dir"
        )
        self.directory = directory
        self.holder = holder


class StateLock:
    """A held lock; `release()` (or process exit) lets the next run in."""

    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path

    def child_env(self) -> dict[str, str]:
        """What a child that inherits `fd` (pass_fds) needs to know it holds this lock."""
        return {INHERITED_FD_ENV: str(self.fd)}

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # the lock goes with the last descriptor of this open file
            self.fd = -1


def lock_state_dir(directory: Path) -> StateLock:
    """Take the directory's lock, or raise StateDirBusy at once. Creates the directory and
    the lock file if missing; changes nothing else in it."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_FILE
    inherited = _inherited(path)
    if inherited is not None:
        return inherited
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_holder(fd)
        os.close(fd)
        raise StateDirBusy(directory, holder) from None
    except OSError as error:  # a filesystem without locks (some network mounts)
        if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            os.close(fd)
            raise
        log.warning("cannot lock %s (%s): a second run on it would not be refused", path, error)
        return StateLock(fd, path)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return StateLock(fd, path)


def _inherited(path: Path) -> StateLock | None:
    """The lock a parent (`flotilla run`) handed down, if the descriptor it names is that
    very file and the lock on it is ours (flock on an inherited descriptor succeeds only
    if its open file holds the lock, or nobody does)."""
    value = os.environ.pop(INHERITED_FD_ENV, None)
    if value is None or not value.isdigit():
        return None
    fd = int(value)
    with contextlib.suppress(OSError):
        held, here = os.fstat(fd), os.stat(path, follow_symlinks=False)
        if (held.st_dev, held.st_ino) == (here.st_dev, here.st_ino):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return StateLock(fd, path)
    return None


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", errors="replace").strip()
    except OSError:
        text = ""
    return text if text.isdigit() else "unknown"
