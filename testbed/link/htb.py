"""Rate limiting with HTB, and its queue, on a forwarding interface.

HTB's token bucket sets the rate and, under load, the queueing; its burst is kept
to about two frames so the bottleneck drains smoothly. A token bucket releases an
idle link's first packet at once, so HTB alone would deliver a small message with
no serialization time at all; the serializer element adds that (see element.py).
"""

from __future__ import annotations

FRAME_BYTES = 1514  # a full Ethernet frame as HTB counts it (no FCS)


def htb_commands(dev: str, rate_mbps: float, queue_packets: int) -> list[str]:
    rate_bit = round(rate_mbps * 1e6)
    burst = 2 * FRAME_BYTES
    return [
        f"tc qdisc replace dev {dev} root handle 1: htb default 1",
        f"tc class add dev {dev} parent 1: classid 1:1 htb rate {rate_bit}bit ceil {rate_bit}bit "
        f"burst {burst} cburst {burst} quantum {FRAME_BYTES}",
        f"tc qdisc add dev {dev} parent 1:1 handle 10: pfifo limit {queue_packets}",
    ]
