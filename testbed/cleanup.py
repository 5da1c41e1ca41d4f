"""Teardown of everything a run created, whatever ends the run.

Resources are registered as they are made and torn down in reverse order. SIGTERM
is turned into an exception (like Ctrl-C's KeyboardInterrupt) so that the same
`finally` path runs; while tearing down, both signals are deferred (and re-raised
afterwards), so a second Ctrl-C cannot leave a half-removed topology.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator

log = logging.getLogger("testbed")


_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def stop_process(proc: subprocess.Popen, grace_s: float = 3.0) -> None:
    """A child we started, ended: SIGTERM, then SIGKILL after `grace_s`."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(grace_s)


class Terminated(BaseException):
    """The run received SIGTERM."""


class Teardown:
    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[[], object]]] = []

    def add(self, what: str, step: Callable[[], object]) -> None:
        self._steps.append((what, step))

    def run(self) -> list[str]:
        """Run every step, newest first; return the failures (it never raises)."""
        failures = []
        with signals_deferred():
            while self._steps:
                what, step = self._steps.pop()
                try:
                    step()
                except Exception as exc:
                    failures.append(f"{what}: {type(exc).__name__}: {exc}")
                    log.warning("cleanup of %s failed: %s", what, exc)
        return failures


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM until the block ends, then raise the first one that came.

    A handler, not a signal mask: a mask covers one thread only, and torch's threads
    would take the signal instead."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {s: signal.signal(s, lambda signum, _: pending.append(signum)) for s in _SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if pending:
            raise KeyboardInterrupt() if pending[0] == signal.SIGINT else Terminated()


def honour_sigint() -> None:
    """Make SIGINT raise KeyboardInterrupt even where it arrived ignored.

    A shell without job control starts background commands (`cmd &` in a script, CI
    steps) with SIGINT ignored, and Python then installs no handler, so `kill -INT`
    would be dropped, except inside `signals_deferred`, which would raise it: the
    outcome would depend on timing. An entry point that promises a clean stop on
    Ctrl-C calls this first; its children inherit a default SIGINT on exec."""
    main = threading.current_thread() is threading.main_thread()
    if main and signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    def raise_terminated(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
