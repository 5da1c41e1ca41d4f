"""The edge agent's open connections under a cap.

A peer that opens connections and never completes a frame (slowloris) would hold a
thread and a slot each until its deadlines run out; at the cap the connection that has
gone longest without completing a frame, and is not being served, is shut down to make
room, so a device that keeps sending requests keeps its connection while stalled ones
are the first to go. Only when every connection is being served is a newcomer refused.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from dataclasses import dataclass, field

__all__ = ["Connection", "Connections"]

log = logging.getLogger("edge")


@dataclass(eq=False)
class Connection:
    sock: socket.socket
    peer: str
    progress: float = field(default_factory=time.monotonic)  # last complete frame (or accept)
    busy: bool = False  # a frame is being handled or answered: never evicted then

    def completed_frame(self) -> None:
        self.progress = time.monotonic()
        self.busy = True

    def answered(self) -> None:
        self.busy = False


class Connections:
    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._open: dict[int, Connection] = {}
        self._lock = threading.Lock()
        self.evicted = 0
        self.refused = 0

    def __len__(self) -> int:
        return len(self._open)

    def admit(self, sock: socket.socket, peer: str) -> Connection | None:
        """The new connection's entry, or None when it must be refused (all busy)."""
        with self._lock:
            if len(self._open) >= self.cap:
                idle = [c for c in self._open.values() if not c.busy]
                if not idle:
                    self.refused += 1
                    return None
                victim = min(idle, key=lambda c: c.progress)
                del self._open[id(victim)]
                self.evicted += 1
                log.warning(
                    "at the cap of %d connections: closing %s (no complete frame for %.1f s)",
                    self.cap,
                    victim.peer,
                    time.monotonic() - victim.progress,
                )
                with contextlib.suppress(OSError):  # wakes its thread's recv with an EOF
                    victim.sock.shutdown(socket.SHUT_RDWR)
            entry = Connection(sock, peer)
            self._open[id(entry)] = entry
            return entry

    def remove(self, entry: Connection) -> None:
        with self._lock:
            self._open.pop(id(entry), None)
