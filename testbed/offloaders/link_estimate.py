"""What the device knows of its link, from the transfers it already makes, and whether
it can trust that.

No probing traffic: the estimate comes from the RTT pings the device agent sends once
at start and from every request's own upload. The edge stamps when a request's last
byte arrived (`uplink_ms`, one way, on the clock all hosts share), so a request of B
bytes that took U ms spent about U - rtt/2 ms being serialized, and the uplink's
goodput is B*8 / (U - rtt/2). One request is noisy (scheduling, a loss), so the
estimate pools the last `window` informative requests: total bits over total
serialization time, which weights large transfers most, as they deserve.

That time is serialization only if nothing waited ahead of the request. Behind a bulk
flow's standing queue a 272-byte request waits tens of milliseconds and "measures"
0.02 Mbit/s on a 2 Mbit/s link. So an upload feeds the estimate only when it can
measure the rate, and the estimate says when it cannot be trusted (`reason`):
- **small**: fewer bytes than `min_bytes` (2 KB, about a packet and a half), or than
  `bdp_share` (1/4) of the bandwidth-delay product at the trusted rate and the
  smallest RTT: its serialization is a fraction of the RTT, below the delay's noise and
  any queue. A serialization time under `min_transfer_ms` (5 ms) is ignored altogether.
- **queueing**: the pooled uploads differ in size (the largest at least twice the
  smallest), yet their times fitted as `queue + bytes/rate` leave more than
  `max_queue_share` (half) of the mean time to the constant `queue` term (or time does
  not grow with size): they measured a queue, not the rate.

The rule the adaptive offloaders follow (`transfer_ms`): `uplink_mbps` is the **last
trusted estimate**; an untrusted upload never changes it, and until one upload has been
trusted it is None and they use their `prior_mbps`. `reason` is "" while the latest
upload was trusted. Competing traffic that shares the link fairly still lowers the
goodput large requests see, so the trusted estimate tracks the bandwidth available.
A limit: requests all of one size behind a standing queue cannot tell the queue from
a slow link; they are trusted if they are large enough.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

NOTHING_YET = "no upload measured yet"


def _rate_mbps(samples) -> float:
    bits = sum(n for n, _ in samples) * 8
    return bits / (sum(ms for _, ms in samples) * 1000)


@dataclass
class LinkEstimate:
    window: int = 8
    min_transfer_ms: float = 5.0
    min_bytes: int = 2048
    bdp_share: float = 0.25
    max_queue_share: float = 0.5
    rtt_ms: float | None = None
    reason: str = NOTHING_YET  # why the latest upload was not trusted; "" if it was
    _samples: deque = field(default_factory=deque)  # every upload timed above the floor
    _trusted: deque = field(default_factory=deque)  # those large enough to measure the rate
    _mbps: float | None = None  # the last trusted estimate

    def observe_rtt(self, rtt_ms: float) -> None:
        """The smallest RTT seen: the path's delay with the least queueing."""
        if rtt_ms > 0:
            self.rtt_ms = rtt_ms if self.rtt_ms is None else min(self.rtt_ms, rtt_ms)

    @property
    def one_way_ms(self) -> float:
        return 0.0 if self.rtt_ms is None else self.rtt_ms / 2

    def needed_bytes(self) -> float:
        """The smallest upload that can measure the rate (module docstring: small)."""
        bdp = 0.0 if self._mbps is None else self._mbps * 1000 / 8 * (self.rtt_ms or 0.0)
        return max(self.min_bytes, self.bdp_share * bdp)

    def observe_upload(self, nbytes: int, uplink_ms: float) -> None:
        serialization_ms = uplink_ms - self.one_way_ms
        if nbytes <= 0 or serialization_ms < self.min_transfer_ms:
            return
        _push(self._samples, (nbytes, serialization_ms), self.window)
        needed = self.needed_bytes()
        if nbytes < needed:
            self.reason = f"small: {nbytes} B uploads measure delay, not a rate (< {needed:.0f} B)"
            return
        _push(self._trusted, (nbytes, serialization_ms), self.window)
        queue_ms = self.queueing_ms()
        mean_ms = sum(ms for _, ms in self._trusted) / len(self._trusted)
        if queue_ms is not None and queue_ms > self.max_queue_share * mean_ms:
            self.reason = f"queueing: about {queue_ms:.0f} ms of {mean_ms:.0f} ms is waiting"
            return
        self.reason = ""
        self._mbps = _rate_mbps(self._trusted)

    def queueing_ms(self) -> float | None:
        """The constant part of the pooled uploads' times, fitted as queue + bytes/rate
        (least squares); inf when time does not grow with size; None when their sizes
        are too alike to tell."""
        sizes = [n for n, _ in self._trusted]
        if len(sizes) < 2 or max(sizes) < 2 * min(sizes):
            return None
        mean_n = sum(sizes) / len(sizes)
        mean_ms = sum(ms for _, ms in self._trusted) / len(sizes)
        cov = sum((n - mean_n) * (ms - mean_ms) for n, ms in self._trusted)
        slope = cov / sum((n - mean_n) ** 2 for n in sizes)
        return float("inf") if slope <= 0 else mean_ms - slope * mean_n

    @property
    def trusted(self) -> bool:
        return not self.reason

    @property
    def uplink_mbps(self) -> float | None:
        """The last trusted estimate (None before one)."""
        return self._mbps

    @property
    def measured_mbps(self) -> float | None:
        """What every upload above the time floor says, trusted or not (diagnostics)."""
        return _rate_mbps(self._samples) if self._samples else None

    def record(self) -> dict[str, Any]:
        """What an adaptive choice records of the estimate it used: `est_mbps`, and
        `est_untrusted` (the reason) when the latest upload could not be trusted."""
        out: dict[str, Any] = {"est_mbps": None if self._mbps is None else round(self._mbps, 4)}
        if self.reason:
            out["est_untrusted"] = self.reason
        return out

    def transfer_ms(self, nbytes: float, prior_mbps: float) -> float:
        """Predicted one-way time of an upload of `nbytes`: serialization at the last
        trusted estimate (else `prior_mbps`) plus delay."""
        mbps = self.uplink_mbps or prior_mbps
        return nbytes * 8 / (mbps * 1000) + self.one_way_ms


def _push(samples: deque, sample: tuple[int, float], window: int) -> None:
    samples.append(sample)
    while len(samples) > window:
        samples.popleft()
