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


_SLEEPER = """
import sys, time
from testbed.cleanup import honour_sigint
if sys.argv[1] == "honour":
    honour_sigint()
try:
    print("ready", flush=True)
    time.sleep(30)
except KeyboardInterrupt:
    sys.exit(130)
sys.exit(0)
"""


@pytest.mark.parametrize("mode, status", [("honour", 130), ("as-started", None)])
def test_sigint_is_honoured_when_it_arrived_ignored(mode, status):
    """As a shell without job control starts `cmd &`: SIGINT ignored. Without
    honour_sigint the interrupt is dropped (the control case, still sleeping)."""
    import subprocess
    import sys
    from pathlib import Path

    proc = subprocess.Popen(
        [sys.executable, "-c", _SLEEPER, mode],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGINT)
        if status is None:
            with pytest.raises(subprocess.TimeoutExpired):
                proc.wait(1.5)
        else:
            assert proc.wait(10) == status
    finally:
        proc.kill()
        proc.wait()
