"""The lock of a run folder: ``<run folder>/.lock``, held by the one run that writes there.

**With OS locks** (Linux, macOS: ``fcntl.flock``): the run opens the lock file and holds an
exclusive ``flock`` on it for its whole life; the kernel releases it when the process ends in any
way (``kill -9``, a crash, a node that reboots), so a lock is never "stale". The file's text
(``<pid> <host>``) only names the holder in messages. Taking a lock is one system call, so two
starts can never both take it; a start that opened the file just before its holder removed it
notices (the path no longer names the file it locked) and tries again.

- held by a live process: refused, naming the process and host;
- not held, and its text names this host, or no readable text (a kill between creating the file
  and writing it): taken over;
- not held, and its text names another host: on a cluster file system whose locks are not shared
  between hosts, a free lock does not prove that the run on that host has ended, so this is
  refused unless ``--take_over_lock`` says that it has (its job was stopped, or moved here). A lock
  that a live process holds is never taken over, with or without the flag.

**Without OS locks** (Windows has no ``fcntl``; some network file systems refuse ``flock``): the
lock file is created exclusively and removed when the run ends; a lock file left by a killed run
stays, and a start is refused until ``--take_over_lock`` takes it over (two takeovers at the same
moment are not kept apart there). Nothing here fails at import on such a system.

Processes forked by the run (data-loading workers) share the open lock file: the lock is free
once they have ended too.
"""
from __future__ import annotations

import errno
import os
import socket
from typing import Optional, Tuple

from .errors import RunFolderError, named_os_error

try:                    # POSIX; absent on Windows (see the module docstring)
    import fcntl
except ImportError:     # pragma: no cover - exercised by setting it to None in the tests
    fcntl = None

LOCK_NAME = ".lock"
TAKE_OVER_FLAG = "--take_over_lock"
# a file system that cannot flock says so with one of these: the exclusive-file lock is used there
NO_OS_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS}


class LockError(RunFolderError):
    """A run folder's lock that this start may not take. ``take_over`` is True when
    ``--take_over_lock`` would take it (the messages say so; ``main`` adds the exact command)."""

    def __init__(self, message, take_over: bool = False):
        super().__init__(message)
        self.take_over = take_over


def _lock_fd(fd: int) -> bool:
    """An exclusive OS lock on ``fd`` without waiting: True when taken, False when another open
    file holds it (an OSError when the file system has no such locks)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _names_file(fd: int, path: str) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (not removed or replaced meanwhile)."""
    try:
        here = os.stat(path)
    except FileNotFoundError:
        return False
    st = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (here.st_dev, here.st_ino)


def _holder(text: str) -> Optional[Tuple[int, str]]:
    """``(pid, host)`` from a lock file's text, or None when it has none (empty, cut short, foreign)."""
    pid, _, host = text.strip().partition(" ")
    if not pid.isascii() or not pid.isdigit() or not host:
        return None
    return int(pid), host


def _read(fd: int) -> str:
    return os.pread(fd, 4096, 0).decode("utf-8", "replace")


def _describe(holder: Optional[Tuple[int, str]]) -> str:
    return f"process {holder[0]} on {holder[1]}" if holder else "a lock file without a readable holder"


class RunLock:
    """``<run_dir>/.lock``, held while this run writes ``run_dir`` (see the module docstring)."""

    def __init__(self, run_dir: str):
        self.run_dir = run_dir
        self.path = os.path.join(run_dir, LOCK_NAME)
        self.host = socket.gethostname()
        self.fd: Optional[int] = None          # the open lock file (OS locks)
        self.created = False                   # the exclusive lock file this run made (no OS locks)
        self.taken_over: Optional[str] = None  # whose lock this start took over, for the log

    @property
    def held(self) -> bool:
        return self.fd is not None or self.created

    def _text(self) -> bytes:
        return f"{os.getpid()} {self.host}\n".encode()

    def acquire(self, take_over: bool = False, resume: bool = False) -> "RunLock":
        """Take the lock or raise a one-line ``RunFolderError``/``LockError``. ``take_over``:
        ``--take_over_lock``; ``resume``: the start continues a run (the advice differs)."""
        if fcntl is None:
            return self._acquire_exclusive(take_over)
        for _ in range(8):               # the holder removed the file between our open and lock: again
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as exc:
                raise named_os_error(exc, self.path) from None
            try:
                locked = _lock_fd(fd)
            except OSError as exc:
                empty = os.fstat(fd).st_size == 0      # made by the open above (or by a writer killed at once)
                os.close(fd)
                if exc.errno not in NO_OS_LOCKS:
                    raise named_os_error(exc, self.path) from None
                if empty:
                    os.remove(self.path)
                return self._acquire_exclusive(take_over)
            except BaseException:
                os.close(fd)
                raise
            try:
                if not locked:
                    holder = _holder(_read(fd))
                    advice = ("wait for it to end (stopping it releases the lock)" if resume else
                              "wait for it to end, or start this run under another --tag NAME")
                    raise RunFolderError(f"run folder {self.run_dir} is in use by {_describe(holder)} (a run is "
                                         f"writing there); {advice}")
                if not _names_file(fd, self.path):
                    os.close(fd)
                    continue
                holder = _holder(_read(fd))
                if holder is not None and holder[1] != self.host:
                    if not take_over:
                        raise LockError(
                            f"run folder {self.run_dir} is locked by process {holder[0]} on host {holder[1]}, and "
                            f"this host ({self.host}) cannot see whether that run still writes there; if it does "
                            f"not (its job was stopped, or moved here), take the lock over with {TAKE_OVER_FLAG}",
                            take_over=True)
                    self.taken_over = _describe(holder)
                elif holder is not None and holder[0] != os.getpid():
                    self.taken_over = f"{_describe(holder)} (its run has ended)"
                try:
                    os.ftruncate(fd, 0)
                    os.pwrite(fd, self._text(), 0)
                    os.fsync(fd)
                except OSError as exc:
                    raise named_os_error(exc, self.path) from None
            except BaseException:
                os.close(fd)
                raise
            self.fd = fd
            return self
        raise RunFolderError(f"run folder {self.run_dir}: cannot take the lock {self.path} (it was replaced "
                             f"repeatedly while this run tried)")

    def _acquire_exclusive(self, take_over: bool) -> "RunLock":
        """The lock without OS locks: the lock file created exclusively (see the module docstring)."""
        for attempt in range(2):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                try:
                    with open(self.path, "rb") as f:
                        holder = _holder(f.read(4096).decode("utf-8", "replace"))
                except FileNotFoundError:        # released meanwhile
                    continue
                if not take_over or attempt:
                    raise LockError(
                        f"run folder {self.run_dir} is locked by {_describe(holder)} ({self.path}); this file "
                        f"system has no OS locks, so a lock left by a run that was killed stays: if no run "
                        f"writes there any more, take it over with {TAKE_OVER_FLAG}", take_over=True) from None
                os.remove(self.path)
                self.taken_over = _describe(holder)
                continue
            try:
                os.write(fd, self._text())
            except OSError as exc:
                os.close(fd)
                os.remove(self.path)
                raise named_os_error(exc, self.path) from None
            os.close(fd)
            self.created = True
            return self
        raise RunFolderError(f"run folder {self.run_dir}: cannot take the lock {self.path}")

    def release(self):
        """Remove the lock file and let go of the lock (idempotent)."""
        if self.fd is not None:
            fd, self.fd = self.fd, None
            try:
                if _names_file(fd, self.path):   # ours: remove it while still holding it
                    os.remove(self.path)
            finally:
                os.close(fd)
        elif self.created:
            self.created = False
            try:
                os.remove(self.path)
            except FileNotFoundError:            # taken over meanwhile (--take_over_lock): not ours to remove
                pass
