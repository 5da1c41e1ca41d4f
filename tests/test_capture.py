"""Attribution of captured segments to requests, on a pcap crafted with scapy."""

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.utils import wrpcap

from testbed.emulation import capture

ISN_UP, ISN_DOWN, PORT, EDGE = 1000, 5000, 40000, 5000


def seg(up: bool, offset: int, size: int, syn: bool = False):
    src, dst = ("10.0.0.1", "10.0.0.2") if up else ("10.0.0.2", "10.0.0.1")
    sport, dport = (PORT, EDGE) if up else (EDGE, PORT)
    isn = ISN_UP if up else ISN_DOWN
    tcp = TCP(
        sport=sport, dport=dport, seq=isn if syn else isn + 1 + offset, flags="S" if syn else "PA"
    )
    packet = Ether() / IP(src=src, dst=dst) / tcp
    return packet / Raw(b"x" * size) if size else packet


def test_segments_attributed_to_requests_with_retransmissions(tmp_path):
    packets = [
        seg(True, 0, 0, syn=True),
        seg(False, 0, 0, syn=True),
        seg(True, 0, 100),  # HELLO: before any recorded request
        seg(True, 100, 1448),
        seg(True, 1548, 552),  # request A: 2000 bytes at 100
        seg(True, 100, 1448),  # A's first segment again: a retransmission
        seg(False, 0, 52),  # A's result
        seg(True, 2100, 800),  # request B at 2100
        seg(False, 52, 52),
        seg(True, 2900, 0),  # a pure ACK: not attributed
    ]
    wrpcap(str(tmp_path / "c.pcap"), packets)
    records = [
        {"stream": [PORT, 100, 0], "bytes_up": 2000, "bytes_down": 52},
        {"stream": [PORT, 2100, 52], "bytes_up": 800, "bytes_down": 52},
    ]
    wire = capture.analyze(tmp_path / "c.pcap", records, EDGE)
    header = 14 + 20 + 20
    assert wire[(PORT, 100)] == {
        "wire_bytes_up": 2 * (1448 + header) + 552 + header,
        "wire_bytes_down": 52 + header,
        "retransmissions": 1,
    }
    assert wire[(PORT, 2100)] == {
        "wire_bytes_up": 800 + header,
        "wire_bytes_down": 52 + header,
        "retransmissions": 0,
    }
