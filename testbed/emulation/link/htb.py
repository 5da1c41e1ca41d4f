"""Rate limiting with HTB, and its queue, on a forwarding interface.

HTB's token bucket sets the rate and, under load, the queueing; its burst is kept
to about two frames so the bottleneck drains smoothly. A token bucket releases an
idle link's first packet at once, so HTB alone would deliver a small message with
no serialization time at all; the userspace element or netem's `rate` adds it.
"""

from __future__ import annotations

import math

FRAME_BYTES = 1514  # a full Ethernet frame as HTB counts it (no FCS)
TINY_RATE_MBPS = 0.008  # HTB cannot stop a class; a trace's outage becomes 8 kbit/s


def rate_bits(rate_mbps: float) -> int:
    return max(round(rate_mbps * 1e6), round(TINY_RATE_MBPS * 1e6))


def htb_root(dev: str, rate_mbps: float) -> list[str]:
    rate, burst = rate_bits(rate_mbps), 2 * FRAME_BYTES
    return [
        f"tc qdisc replace dev {dev} root handle 1: htb default 1",
        f"tc class add dev {dev} parent 1: classid 1:1 htb rate {rate}bit ceil {rate}bit "
        f"burst {burst} cburst {burst} quantum {FRAME_BYTES}",
    ]


def htb_rate_change(dev: str, rate_mbps: float) -> list[str]:
    rate, burst = rate_bits(rate_mbps), 2 * FRAME_BYTES
    return [
        "tc",
        "class",
        "change",
        "dev",
        dev,
        "parent",
        "1:",
        "classid",
        "1:1",
        "htb",
        "rate",
        f"{rate}bit",
        "ceil",
        f"{rate}bit",
        "burst",
        str(burst),
        "cburst",
        str(burst),
        "quantum",
        str(FRAME_BYTES),
    ]


def queue_qdisc(link) -> str:
    """The leaf queue: a packet-counted or byte-counted drop-tail FIFO."""
    if link.queue_bytes is not None:
        return f"bfifo limit {link.queue_bytes}"
    return f"pfifo limit {link.queue_packets}"


def htb_commands(dev: str, rate_mbps: float, link) -> list[str]:
    return [
        *htb_root(dev, rate_mbps),
        f"tc qdisc add dev {dev} parent 1:1 handle 10: {queue_qdisc(link)}",
    ]


def netem_commands(
    dev: str, rate_mbps: float, link, gemodel: tuple[float, float] | None, serialize: bool = True
) -> list[str]:
    """HTB for the rate (so traces can change it) and netem under it for serialization
    (`rate`; not with a trace, whose rate HTB follows), delay, jitter, loss and the queue
    limit (netem counts packets)."""
    limit = link.queue_packets or math.ceil(link.queue_bytes / FRAME_BYTES)
    netem = f"netem limit {limit} delay {link.delay_ms:g}ms"
    if link.jitter_ms > 0:
        distribution = {
            "normal": " distribution normal",
            "pareto": " distribution pareto",
            "uniform": "",
        }[link.jitter_distribution]
        netem += f" {link.jitter_ms:g}ms{distribution}"
    if link.loss_pct > 0:
        if gemodel is None:
            netem += f" loss random {link.loss_pct:g}%"
        else:
            netem += f" loss gemodel {gemodel[0]:.6g}% {gemodel[1]:.6g}% 100% 0%"
    if serialize:
        netem += f" rate {rate_bits(rate_mbps)}bit"
    return [*htb_root(dev, rate_mbps), f"tc qdisc add dev {dev} parent 1:1 handle 10: {netem}"]
