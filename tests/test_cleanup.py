import os
import signal

import pytest

from testbed.cleanup import Teardown, Terminated, sigterm_raises


def test_teardown_runs_newest_first_and_survives_failures():
    done = []
    teardown = Teardown()
    teardown.add("a", lambda: done.append("a"))
    teardown.add("broken", lambda: 1 / 0)
    teardown.add("c", lambda: done.append("c"))
    failures = teardown.run()
    assert done == ["c", "a"]
    assert failures == ["broken: ZeroDivisionError: division by zero"]
    assert teardown.run() == []  # idempotent: nothing runs twice


def test_sigterm_becomes_an_exception_and_the_handler_is_restored():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated), sigterm_raises():
        os.kill(os.getpid(), signal.SIGTERM)
        signal.sigtimedwait([], 1) if hasattr(signal, "sigtimedwait") else None
    assert signal.getsignal(signal.SIGTERM) == before


def test_signals_are_held_during_teardown():
    received = []
    teardown = Teardown()
    teardown.add("step", lambda: (os.kill(os.getpid(), signal.SIGINT), received.append("done")))
    with pytest.raises(KeyboardInterrupt):
        teardown.run()  # the SIGINT is delivered only after the teardown finished
    assert received == ["done"]
