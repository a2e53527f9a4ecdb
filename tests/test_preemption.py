"""helper/preemption.py: SIGTERM, SIGUSR1 and SIGHUP raise StopSignal (a KeyboardInterrupt) while
the work is armed, are only noted while main cleans up, and the previous handlers come back; the
exit status is 128 + the signal's number. (A real run stopped by them: tests/test_stop_messages.py.)"""
import os
import signal
import threading

import pytest

from helper.preemption import STOP_SIGNALS, StopOnSignals, StopSignal, exit_status, stopped_by


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGUSR1, 138), (signal.SIGHUP, 129)])
def test_an_armed_run_stops_on_the_signal(signum, status):
    before = signal.getsignal(signum)
    with StopOnSignals() as stop:
        with pytest.raises(StopSignal) as e:
            with stop.armed():
                os.kill(os.getpid(), signum)
                for _ in range(1000):                    # the handler runs at the next bytecode
                    pass
                pytest.fail("no StopSignal")
        os.kill(os.getpid(), signum)                     # while main cleans up: noted, not raised
    assert isinstance(e.value, KeyboardInterrupt) and e.value.signum == signum
    assert exit_status(e.value) == status and stopped_by(e.value) == f"stopped by {signal.Signals(signum).name}"
    assert stop.received == [signum, signum]
    assert signal.getsignal(signum) is before            # the previous handler is back


def test_ctrl_c_keeps_its_wording_and_status():
    assert stopped_by(KeyboardInterrupt()) == "interrupted (Ctrl-C)" and exit_status(KeyboardInterrupt()) == 130


def test_a_second_signal_does_not_interrupt_the_stop_of_the_first():
    handled = False
    with StopOnSignals() as stop:
        with stop.armed():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                sum(range(1000))
            except StopSignal:
                os.kill(os.getpid(), signal.SIGTERM)     # e.g. the scheduler repeats it
                sum(range(1000))
                handled = True
    assert handled and stop.received == [signal.SIGTERM, signal.SIGTERM]


def test_off_the_main_thread_nothing_is_installed():
    seen = {}

    def work():
        with StopOnSignals() as stop:
            seen["previous"] = dict(stop.previous)
    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert seen["previous"] == {} and signal.SIGTERM in STOP_SIGNALS
