"""Packets on the wire (`--capture`): a pcap of the agents' TCP traffic on the
bottleneck, and per request the bytes really sent (Ethernet, IP and TCP headers and
retransmissions included) beside the protocol's payload bytes.

Segments are attributed to requests by TCP stream offsets: the device agent records
where each request starts in its connection's streams (`stream` in records.jsonl),
and a segment's offset is its sequence number less the connection's initial one.

Capturing runs in the root namespace on the bottleneck port of switch A: it sees the
uplink after the HTB queue and the downlink as it arrives, both directions of the
agents' connection (`tcp port EDGE_PORT`) and nothing else.
"""

from __future__ import annotations

import argparse
import bisect
import signal
import sys
import threading
from collections import defaultdict
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iface", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    from scapy.all import AsyncSniffer
    from scapy.utils import PcapWriter

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    writer = PcapWriter(str(args.out), sync=False)
    sniffer = AsyncSniffer(
        iface=args.iface, filter=f"tcp port {args.port}", store=False, prn=writer.write
    )
    sniffer.start()
    print("READY", flush=True)
    done.wait()
    sniffer.stop()
    writer.close()
    return 0


def analyze(pcap: Path, records: list[dict], edge_port: int) -> dict[tuple, dict]:
    """(local port, sent offset) of each offloaded request -> its wire bytes each way and
    its retransmitted segments."""
    from scapy.layers.inet import IP, TCP
    from scapy.utils import PcapReader

    starts: dict[tuple, list] = defaultdict(list)  # (port, direction) -> [(offset, key, size)]
    for record in records:
        if "stream" in record and record.get("bytes_up"):
            port, sent, received = record["stream"]
            key = (port, sent)
            starts[(port, "up")].append((sent, key, record["bytes_up"]))
            starts[(port, "down")].append((received, key, record.get("bytes_down", 0)))
    for ranges in starts.values():
        ranges.sort()
    out: dict[tuple, dict] = defaultdict(
        lambda: {"wire_bytes_up": 0, "wire_bytes_down": 0, "retransmissions": 0}
    )
    isn: dict[tuple, int] = {}
    seen_end: dict[tuple, int] = defaultdict(int)
    with PcapReader(str(pcap)) as packets:
        for packet in packets:
            if TCP not in packet or IP not in packet:
                continue
            tcp = packet[TCP]
            if tcp.dport == edge_port:
                flow = (tcp.sport, "up")
            elif tcp.sport == edge_port:
                flow = (tcp.dport, "down")
            else:
                continue
            if tcp.flags.S:
                isn[flow] = tcp.seq
                continue
            size = len(tcp.payload)
            if size == 0 or flow not in isn or flow not in starts:
                continue  # pure ACKs, or a connection that began before the capture
            offset = (tcp.seq - isn[flow] - 1) % 2**32
            ranges = starts[flow]
            i = bisect.bisect_right(ranges, (offset, (float("inf"),), 0)) - 1
            if i < 0 or offset >= ranges[i][0] + ranges[i][2]:
                continue  # HELLO, pings, warm-up requests
            row = out[ranges[i][1]]
            row["wire_bytes_up" if flow[1] == "up" else "wire_bytes_down"] += len(packet)
            if offset < seen_end[flow]:
                row["retransmissions"] += 1
            seen_end[flow] = max(seen_end[flow], offset + size)
    return dict(out)


if __name__ == "__main__":
    sys.exit(main())
