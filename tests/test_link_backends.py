"""The netem path can only be checked here by the exact `tc` commands it would issue
(no machine of this project has sch_netem); the userspace path is measured in
test_link_emulation.py."""

import pytest

from testbed.config.scenario import LinkSpec
from testbed.emulation.link import backends
from testbed.emulation.link.htb import htb_commands, htb_rate_change, netem_commands
from testbed.errors import EnvironmentMissing


def test_htb_with_packet_queue():
    link = LinkSpec(bandwidth_mbps=1.5, queue_packets=50)
    assert htb_commands("s-eth3", 1.5, link) == [
        "tc qdisc replace dev s-eth3 root handle 1: htb default 1",
        "tc class add dev s-eth3 parent 1: classid 1:1 htb rate 1500000bit ceil 1500000bit "
        "burst 3028 cburst 3028 quantum 1514",
        "tc qdisc add dev s-eth3 parent 1:1 handle 10: pfifo limit 50",
    ]


def test_htb_with_byte_queue():
    link = LinkSpec(bandwidth_mbps=10, queue_packets=None, queue_bytes=30000)
    assert (
        htb_commands("x", 10, link)[-1]
        == "tc qdisc add dev x parent 1:1 handle 10: bfifo limit 30000"
    )


def test_rate_change_never_zero():
    command = htb_rate_change("x", 0.0)
    assert command[command.index("rate") + 1] == "8000bit"


def test_netem_commands():
    link = LinkSpec(bandwidth_mbps=2, delay_ms=20, jitter_ms=3, jitter_distribution="pareto",
                    loss_pct=1.5, queue_packets=80)  # fmt: skip
    assert netem_commands("p", 2, link, None)[-1] == (
        "tc qdisc add dev p parent 1:1 handle 10: netem limit 80 delay 20ms 3ms "
        "distribution pareto loss random 1.5% rate 2000000bit"
    )
    bursty = LinkSpec(bandwidth_mbps=2, delay_ms=5, loss_pct=5, loss_model="gilbert_elliott",
                      loss_burst_packets=4, queue_packets=None, queue_bytes=15140)  # fmt: skip
    assert netem_commands("p", 2, bursty, (1.315789, 25.0))[-1] == (
        "tc qdisc add dev p parent 1:1 handle 10: netem limit 10 delay 5ms "
        "loss gemodel 1.31579% 25% 100% 0% rate 2000000bit"
    )


@pytest.mark.parametrize(
    "requested, netem_here, chosen",
    [("auto", True, "netem"), ("auto", False, "userspace"), ("userspace", True, "userspace"),
     ("netem", True, "netem"), ("userspace", False, "userspace")],
)  # fmt: skip
def test_choose_backend(requested, netem_here, chosen):
    assert backends.choose_backend(requested, netem_here).name == chosen


def test_forcing_netem_where_missing_is_exit_3():
    with pytest.raises(EnvironmentMissing, match="no sch_netem") as info:
        backends.choose_backend("netem", False)
    assert info.value.exit_status == 3
