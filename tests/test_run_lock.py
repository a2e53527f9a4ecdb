"""helper/run_lock.py: a run folder's lock is really exclusive (an OS lock held for the run's life),
a lock whose process ended is taken over, another host's lock only with --take_over_lock, and the
races of two starts are decided by the kernel (tested deterministically, by running the competitor
at a chosen point of the other's acquire). Without fcntl the module still imports and locks by
exclusive creation."""
import errno
import importlib
import os
import socket
import subprocess
import sys

import pytest

from helper import run_lock, runfolder
from helper.errors import RunFolderError
from helper.run_lock import LOCK_NAME, LockError, RunLock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = socket.gethostname()


@pytest.fixture
def run_dir(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    return str(folder)


def lock_text(run_dir):
    with open(os.path.join(run_dir, LOCK_NAME)) as f:
        return f.read().split()


def write_lock(run_dir, text):
    with open(os.path.join(run_dir, LOCK_NAME), "w") as f:
        f.write(text)


def test_a_live_holder_is_refused_and_a_killed_one_is_taken_over(run_dir):
    """A real process holds the lock: refused, naming it; after kill -9 the kernel has released it
    and the next start takes it over (the file the killed run left is reused)."""
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from helper.run_lock import RunLock; "
                               "RunLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(60)",
                               run_dir], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderError, match=rf"in use by process {holder.pid} on {HOST}") as e:
            runfolder.claim(run_dir, resume=False, overwrite=False)
        assert "\n" not in str(e.value) and "--tag NAME" in str(e.value)
        with pytest.raises(RunFolderError, match="stopping it releases the lock"):
            runfolder.claim(run_dir, resume=True, overwrite=False, take_over=True)   # never a live lock
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert lock_text(run_dir) == [str(holder.pid), HOST]          # kill -9 leaves the file ...
    lock = RunLock(run_dir).acquire()                              # ... but not the lock
    assert lock_text(run_dir) == [str(os.getpid()), HOST] and lock.taken_over.startswith(f"process {holder.pid}")
    lock.release()
    assert not os.path.exists(os.path.join(run_dir, LOCK_NAME))


@pytest.mark.parametrize("text", ["", "12", "not a lock\n", f"{os.getppid()} {HOST}\n", f"999999999 {HOST}\n"],
                         ids=["empty", "cut-short", "foreign", "unrelated-live-pid", "dead-pid"])
def test_a_lock_file_nobody_holds_on_this_host_is_taken_over(run_dir, text):
    """Empty (a kill between create and write), unreadable, or naming a process of this host that
    holds no lock (ended; or its pid reused by an unrelated live process): taken over."""
    write_lock(run_dir, text)
    lock = RunLock(run_dir).acquire()
    assert lock_text(run_dir) == [str(os.getpid()), HOST]
    with pytest.raises(RunFolderError, match=f"in use by process {os.getpid()}"):
        RunLock(run_dir).acquire()                   # a second start while this one holds it
    lock.release()
    lock.release()                                   # idempotent
    assert os.listdir(run_dir) == []


def test_another_hosts_lock_needs_take_over_lock(run_dir):
    write_lock(run_dir, "4242 node-17\n")
    with pytest.raises(LockError) as e:
        RunLock(run_dir).acquire()
    message = str(e.value)
    assert e.value.take_over and "process 4242 on host node-17" in message and "--take_over_lock" in message
    assert "\n" not in message and lock_text(run_dir) == ["4242", "node-17"]       # untouched
    lock = RunLock(run_dir).acquire(take_over=True)
    assert lock.taken_over == "process 4242 on node-17" and lock_text(run_dir) == [str(os.getpid()), HOST]
    lock.release()


def test_two_starts_racing_for_a_stale_lock_cannot_both_take_it(run_dir, monkeypatch):
    """The old read-check-delete let both take over. Start B runs completely between A's opening of
    the lock file and A's lock: B holds it, A is refused; neither wrote the folder twice."""
    write_lock(run_dir, f"999999999 {HOST}\n")                     # a stale lock (its process is gone)
    real, held, calls = run_lock._lock_fd, [], []

    def b_first(fd):
        calls.append(fd)
        if len(calls) == 1:                                         # A's lock: B goes first, in full
            held.append(RunLock(run_dir).acquire())
        return real(fd)
    monkeypatch.setattr(run_lock, "_lock_fd", b_first)
    with pytest.raises(RunFolderError, match=f"in use by process {os.getpid()}"):
        RunLock(run_dir).acquire()                                   # A
    (b,) = held
    assert b.held and lock_text(run_dir) == [str(os.getpid()), HOST]
    b.release()


def test_a_start_that_opened_the_file_its_holder_then_removed_locks_the_new_one(run_dir, monkeypatch):
    """The holder releases (removes the file) after B opened it: B's lock on the removed file is
    worthless, B notices and locks the file that the path names now."""
    holder = RunLock(run_dir).acquire()
    real, calls = run_lock._lock_fd, []

    def released_meanwhile(fd):
        calls.append(fd)
        if len(calls) == 1:
            holder.release()
        return real(fd)
    monkeypatch.setattr(run_lock, "_lock_fd", released_meanwhile)
    b = RunLock(run_dir).acquire()
    assert len(calls) == 2 and run_lock._names_file(b.fd, b.path)
    with pytest.raises(RunFolderError, match="in use"):
        RunLock(run_dir).acquire()
    b.release()


def test_without_fcntl_the_module_imports_and_locks_by_exclusive_creation(run_dir, monkeypatch):
    import helper
    monkeypatch.setitem(sys.modules, "fcntl", None)                 # as on Windows
    monkeypatch.delitem(sys.modules, "helper.run_lock")
    monkeypatch.setattr(helper, "run_lock", run_lock)               # restored by undo, as sys.modules
    windows = importlib.import_module("helper.run_lock")
    monkeypatch.undo()                                              # the real module is back for everyone
    assert sys.modules["helper.run_lock"] is run_lock and helper.run_lock is run_lock
    assert windows.fcntl is None and windows is not run_lock
    lock = windows.RunLock(run_dir).acquire()
    assert lock_text(run_dir) == [str(os.getpid()), HOST]
    with pytest.raises(windows.LockError, match="no OS locks.*--take_over_lock") as e:
        windows.RunLock(run_dir).acquire()                          # also a lock a killed run left
    assert e.value.take_over
    other = windows.RunLock(run_dir).acquire(take_over=True)
    assert other.taken_over == f"process {os.getpid()} on {HOST}"
    other.release()
    lock.release()                                                  # its file is gone: no error
    assert os.listdir(run_dir) == []


def test_a_file_system_without_flock_falls_back_to_exclusive_creation(run_dir, monkeypatch):
    def no_locks(fd):
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(run_lock, "_lock_fd", no_locks)
    lock = RunLock(run_dir).acquire()
    assert lock.created and lock.fd is None
    with pytest.raises(LockError, match="no OS locks"):
        RunLock(run_dir).acquire()
    lock.release()
    assert os.listdir(run_dir) == []
