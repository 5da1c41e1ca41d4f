"""What the device knows of its link, from the transfers it already makes.

No probing traffic: the estimate comes from the RTT pings the device agent sends once
at start and from every request's own upload. The edge stamps when a request's last
byte arrived (`uplink_ms`, one way, on the clock all hosts share), so a request of B
bytes that took U ms spent about U - rtt/2 ms being serialized, and the uplink's
goodput is B*8 / (U - rtt/2). One request is noisy (scheduling, a loss), so the
estimate pools the last `window` informative requests: total bits over total
serialization time, which weights large transfers most, as they deserve.

A request whose serialization time is below `min_transfer_ms` (5 ms) says little about the
rate (a 60-byte DeepCOD frame crosses a 1 Mbit/s link in half a millisecond, inside
the delay's noise), so it is left out. Until one informative request has been seen
the estimate is None, and adaptive offloaders fall back to their `prior_mbps`.
Competing traffic lowers the goodput a request sees, so the estimate tracks the
bandwidth actually available, which is what a split decision needs.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class LinkEstimate:
    window: int = 8
    min_transfer_ms: float = 5.0
    rtt_ms: float | None = None
    _samples: deque = field(default_factory=deque)

    def observe_rtt(self, rtt_ms: float) -> None:
        """The smallest RTT seen: the path's delay with the least queueing."""
        if rtt_ms > 0:
            self.rtt_ms = rtt_ms if self.rtt_ms is None else min(self.rtt_ms, rtt_ms)

    @property
    def one_way_ms(self) -> float:
        return 0.0 if self.rtt_ms is None else self.rtt_ms / 2

    def observe_upload(self, nbytes: int, uplink_ms: float) -> None:
        serialization_ms = uplink_ms - self.one_way_ms
        if nbytes <= 0 or serialization_ms < self.min_transfer_ms:
            return
        self._samples.append((nbytes, serialization_ms))
        while len(self._samples) > self.window:
            self._samples.popleft()

    @property
    def uplink_mbps(self) -> float | None:
        if not self._samples:
            return None
        bits = sum(n for n, _ in self._samples) * 8
        return bits / (sum(ms for _, ms in self._samples) * 1000)

    def transfer_ms(self, nbytes: float, prior_mbps: float) -> float:
        """Predicted one-way time of an upload of `nbytes`: serialization plus delay."""
        mbps = self.uplink_mbps or prior_mbps
        return nbytes * 8 / (mbps * 1000) + self.one_way_ms
