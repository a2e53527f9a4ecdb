"""Stopping on a cluster's signals as on Ctrl-C.

A scheduler stops a job with a signal, not a keyboard: SLURM sends SIGTERM at the time limit and
on ``scancel`` (and, with ``--signal=USR1@N``, SIGUSR1 N seconds before), Kubernetes sends SIGTERM,
a closed terminal sends SIGHUP. ``StopOnSignals`` makes each of them do what Ctrl-C does: its
handler raises ``StopSignal``, a ``KeyboardInterrupt``, in the main thread at once, so the run
stops wherever it is as it stops on Ctrl-C. That is safe at any point: checkpoints and JSON files
are replaced atomically, an append that is cut short is cut back (``helper.runlog``), nothing is
written after the stop but the lock's removal, and a resume continues from the last checkpoint.
``main`` prints the one line with the exact ``--resume`` command, releases the lock and returns
the shell's convention for a process ended by signal n, 128 + n: 143 for SIGTERM, 138 for
SIGUSR1, 129 for SIGHUP (130 for Ctrl-C, as before).

The handler raises only while the run's work is ``armed``; a signal that arrives while ``main``
cleans up (releasing the lock, printing the line) is noted and ignored, so cleanup always
completes. Where a signal does not exist (Windows has no SIGUSR1/SIGHUP) it is left out; off the
main thread (where Python cannot install handlers) nothing is installed.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Dict, List

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGUSR1", "SIGHUP") if hasattr(signal, name))
CTRL_C_STATUS = 130          # 128 + SIGINT


class StopSignal(KeyboardInterrupt):
    """The run was told to stop by a signal (``signum``); it exits with ``128 + signum``."""

    def __init__(self, signum: int):
        self.signum = int(signum)
        super().__init__(signal_name(signum))


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def stopped_by(exc: KeyboardInterrupt) -> str:
    """How the stop reads in the one line: ``interrupted (Ctrl-C)`` or ``stopped by SIGTERM``."""
    return f"stopped by {signal_name(exc.signum)}" if isinstance(exc, StopSignal) else "interrupted (Ctrl-C)"


def exit_status(exc: KeyboardInterrupt) -> int:
    """128 + the signal's number (130 for Ctrl-C)."""
    return 128 + exc.signum if isinstance(exc, StopSignal) else CTRL_C_STATUS


class StopOnSignals:
    """``with StopOnSignals() as stop: ... with stop.armed(): work()``: within the outer block the
    stop signals are handled (the previous handlers come back at its end); within ``armed`` the
    first one raises ``StopSignal``. ``received`` lists the signals seen."""

    def __init__(self, signals=STOP_SIGNALS):
        self.signals = tuple(signals)
        self.previous: Dict[int, object] = {}
        self.received: List[int] = []
        self._armed = False

    def __enter__(self) -> "StopOnSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in self.signals:
                self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info):
        self._armed = False
        previous, self.previous = self.previous, {}
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        return False

    @contextlib.contextmanager
    def armed(self):
        self._armed = True
        try:
            yield self
        finally:
            self._armed = False

    def _handle(self, signum, frame):
        self.received.append(signum)
        if self._armed:
            self._armed = False          # once: the stop that follows is not interrupted again
            raise StopSignal(signum)
