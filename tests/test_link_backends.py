"""The netem path can only be checked here by the exact `tc` commands it would issue
(no machine of this project has sch_netem); the userspace path is measured in
test_link_emulation.py."""

import dataclasses

import pytest

from testbed import programs
from testbed.cleanup import Teardown
from testbed.emulation.link import backends, element
from testbed.emulation.link.htb import htb_commands, htb_rate_change, netem_commands
from testbed.emulation.link.settings import LinkSpec
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
    link = LinkSpec(
        bandwidth_mbps=2,
        delay_ms=20,
        jitter_ms=3,
        jitter_distribution="pareto",
        loss_pct=1.5,
        queue_packets=80,
    )
    assert netem_commands("p", 2, link, None)[-1] == (
        "tc qdisc add dev p parent 1:1 handle 10: netem limit 80 delay 20ms 3ms "
        "distribution pareto loss random 1.5% rate 2000000bit"
    )
    bursty = LinkSpec(
        bandwidth_mbps=2,
        delay_ms=5,
        loss_pct=5,
        loss_model="gilbert_elliott",
        loss_burst_packets=4,
        queue_packets=None,
        queue_bytes=15140,
    )
    assert netem_commands("p", 2, bursty, (1.315789, 25.0))[-1] == (
        "tc qdisc add dev p parent 1:1 handle 10: netem limit 10 delay 5ms "
        "loss gemodel 1.31579% 25% 100% 0% rate 2000000bit"
    )


@pytest.mark.parametrize(
    "requested, netem_here, chosen",
    [
        ("auto", True, "netem"),
        ("auto", False, "userspace"),
        ("userspace", True, "userspace"),
        ("netem", True, "netem"),
        ("userspace", False, "userspace"),
    ],
)
def test_choose_backend(requested, netem_here, chosen):
    assert backends.choose_backend(requested, netem_here).name == chosen


def test_forcing_netem_where_missing_is_exit_3():
    with pytest.raises(EnvironmentMissing, match="no sch_netem") as info:
        backends.choose_backend("netem", False)
    assert info.value.exit_status == 3


# ------------------------------------------------------- one declaration of the settings

UPLINK = LinkSpec(
    bandwidth_mbps=2.5,
    delay_ms=20,
    jitter_ms=3.25,
    jitter_distribution="pareto",
    loss_pct=0.1,
    loss_model="gilbert_elliott",
    loss_burst_packets=4,
)


@pytest.mark.parametrize(
    "config",
    [
        element.ElementConfig(queue=1, seed=7001, link=UPLINK),
        element.ElementConfig(queue=101, link=LinkSpec(bandwidth_mbps=1.0)),
        element.ElementConfig(
            queue=3,
            seed=2,
            trace="/t/x.up",
            trace_start=12345.678901234,
            link=LinkSpec(bandwidth_mbps=None, delay_ms=10),
        ),
    ],
    ids=["impaired", "defaults", "trace"],
)
def test_element_argv_parses_back_to_the_same_settings(config):
    argv = element.arguments(config)
    assert all(isinstance(a, str) for a in argv)
    assert element.parse_args(argv) == config


def test_the_queue_is_the_qdiscs_alone():
    """The element does not take the queue limits: its argv leaves them out, and what it
    parses back differs from the link in nothing else."""
    link = LinkSpec(bandwidth_mbps=10, delay_ms=5, queue_packets=None, queue_bytes=30000)
    argv = element.arguments(element.ElementConfig(queue=1, link=link))
    assert not any(a.startswith("--queue-") for a in argv)
    parsed = element.parse_args(argv).link
    assert dataclasses.replace(parsed, queue_packets=None, queue_bytes=30000) == link


def test_element_parser_refuses_what_the_declaration_does_not_allow():
    with pytest.raises(SystemExit):
        element.parse_args(["--queue", "1", "--jitter-distribution", "gauss"])
    with pytest.raises(SystemExit):
        element.parse_args(["--delay-ms", "5"])  # --queue is required
    with pytest.raises(SystemExit):
        element.parse_args(["--queue", "1", "--trace", "x.up"])  # from when?


def test_to_dict_leaves_out_what_a_trace_or_the_other_queue_limit_stands_in_for():
    assert LinkSpec(bandwidth_mbps=None, queue_packets=None, queue_bytes=3000).to_dict() == {
        "delay_ms": 0.0,
        "jitter_ms": 0.0,
        "jitter_distribution": "normal",
        "loss_pct": 0.0,
        "loss_model": "random",
        "loss_burst_packets": 1.0,
        "queue_bytes": 3000,
    }


# ------------------------------------------------------- a backend sets up its direction


class FakeNode:
    def __init__(self, name: str) -> None:
        self.name = name

    def defaultIntf(self) -> str:  # Mininet's name
        return f"{self.name}-eth0"

    def cmd(self, command: str) -> str:
        return ""


def configure(backend, link, receivers=2, direction="uplink"):
    """What `backend` does for one direction, with fake hosts: (commands, started argvs)."""
    ran, started = [], []
    tools = backends.LinkTools(
        run=lambda node, command: ran.append((node.name, command)) or "",
        start=lambda host, argv, log_name, what: started.append((host.name, argv)),
        teardown=Teardown(),
        prefix="dc1234",
    )
    d = backends.Direction(
        name=direction,
        link=link,
        switch=FakeNode("sa"),
        port="sa-eth3",
        receivers=[FakeNode(f"h{i}") for i in range(receivers)],
        trace=None,
        trace_start=0.0,
        seed=7,
    )
    assert backend.configure(d, tools) is None  # no trace: no player
    return ran, started


def test_userspace_backend_shapes_the_port_and_starts_an_element_per_receiver():
    ran, started = configure(backends.UserspaceBackend(), UPLINK)
    assert [c for n, c in ran if n == "sa"] == htb_commands("sa-eth3", 2.5, UPLINK)
    rules = [c for n, c in ran if n != "sa"]
    assert rules == [
        f"iptables -t mangle -A PREROUTING -i h{i}-eth0 -m comment --comment dc1234-uplink "
        f"-j NFQUEUE --queue-num {1 + i} --queue-bypass"
        for i in range(2)
    ]
    for i, (host, argv) in enumerate(started):
        assert host == f"h{i}"
        assert argv[:3] == programs.command("link-element")[:3]
        config = element.parse_args(argv[3:])
        assert config == element.ElementConfig(queue=1 + i, seed=7000 + 1 + i, link=UPLINK)


def test_netem_backend_runs_netem_under_htb():
    ran, started = configure(backends.NetemBackend(), UPLINK, direction="downlink")
    assert started == []
    assert [n for n, _ in ran] == ["sa"] * 3
    assert ran[-1][1].startswith("tc qdisc add dev sa-eth3 parent 1:1 handle 10: netem limit 100")
    assert ran[-1][1].endswith("rate 2500000bit")
