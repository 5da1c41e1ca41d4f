"""A log that a peer cannot flood: what peers cause (refusals, closed connections) is
logged at most `per_window` times a window, and the next line says how many were left
out, so an attack shows in edge.log without filling the disk."""

from __future__ import annotations

import logging
import threading
import time

__all__ = ["LogBudget"]


class LogBudget(logging.Filter):
    def __init__(self, per_window: int = 20, window_s: float = 10.0) -> None:
        super().__init__()
        self.per_window = per_window
        self.window_s = window_s
        self._start = time.monotonic()
        self._count = 0
        self._dropped = 0
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:  # the agent's own faults are always logged
            return True
        with self._lock:
            now = time.monotonic()
            if now - self._start >= self.window_s:
                self._start, self._count = now, 0
            if self._count >= self.per_window:
                self._dropped += 1
                return False
            self._count += 1
            if self._dropped:
                record.msg = f"({self._dropped} lines about peers left out) {record.msg}"
                self._dropped = 0
        return True
