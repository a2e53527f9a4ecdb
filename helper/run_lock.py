"""The lock of a run folder: ``<run folder>/.lock`` holds the writer's process id and host while
a run writes there; a lock whose process is gone (same host) is stale and taken over."""
from __future__ import annotations

import os
import socket
from typing import Optional, Tuple

from .errors import RunFolderError

LOCK_NAME = ".lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:          # someone else's live process
        return True
    except OSError:
        return False
    return True


class RunLock:
    """``<run_dir>/.lock``, created exclusively, holding ``pid host``."""

    def __init__(self, run_dir: str):
        self.run_dir = run_dir
        self.path = os.path.join(run_dir, LOCK_NAME)
        self.held = False

    def holder(self) -> Tuple[Optional[int], str]:
        try:
            with open(self.path) as f:
                pid, _, host = f.read().strip().partition(" ")
            return int(pid), host
        except (OSError, ValueError):
            return None, ""

    def acquire(self):
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                pid, host = self.holder()
                if pid is None or host != socket.gethostname():
                    if pid is None and not os.path.exists(self.path):
                        continue                     # released in between: try again
                    raise RunFolderError(
                        f"run folder {self.run_dir} is locked by "
                        + (f"process {pid} on {host}" if pid is not None else "an unreadable lock file")
                        + f"; if no run is writing there any more, delete {self.path}")
                if _pid_alive(pid):
                    raise RunFolderError(f"run folder {self.run_dir} is in use by process {pid} (a run is "
                                         f"writing there); wait for it to end, or give this run another --tag")
                try:                                 # stale: its process is gone (kill -9, crash)
                    os.remove(self.path)
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()} {socket.gethostname()}\n")
            self.held = True
            return self
        raise RunFolderError(f"run folder {self.run_dir}: cannot take the lock {self.path}")

    def release(self):
        if self.held:
            self.held = False
            try:
                os.remove(self.path)
            except OSError:
                pass
