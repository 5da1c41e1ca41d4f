"""Scenario schema: bad files give one short message naming the key path, the value and
what is allowed; good files resolve with every default filled and round-trip."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import testbed.offloaders as offloaders
from testbed.config.scenario import (
    HostSpec,
    LinkSpec,
    NetworkSpec,
    OffloaderSpec,
    Scenario,
    load_scenario,
    parse_scenario,
)
from testbed.config.schema import LINK, key_paths
from testbed.errors import ScenarioError
from testbed.offloaders.base import Offloader, Param

REPO = Path(__file__).resolve().parent.parent
MINIMAL = "model: fashion_cnn\nnetwork:\n  uplink: {bandwidth_mbps: 10}\n"


@pytest.fixture(autouse=True)
def registries(monkeypatch):
    """Two known plugins, and a throw-away offloader `fakejpeg` with one parameter."""
    monkeypatch.setattr("testbed.models.plugins.available", lambda: ["fashion_cnn", "mobilenet_v2"])

    class FakeJpeg(Offloader):
        name = "fakejpeg"
        description = "test only"
        params = {  # noqa: RUF012
            "quality": Param(int, 75, "an integer from 1 to 100", lambda q: 1 <= q <= 100)
        }

        def device(self, sample, timer):
            raise NotImplementedError

    offloaders.register(FakeJpeg)
    yield
    del offloaders._REGISTRY["fakejpeg"]


def write(folder: Path, text: str | bytes, name: str = "scenario.yaml") -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def error_of(path: Path) -> str:
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    return str(info.value)


# Each case: (id, file text, substrings the message must contain). MINIMAL is valid.
NET = "network:\n  uplink: {bandwidth_mbps: 10}\n"
M = "model: fashion_cnn\n"
BAD = [
    ("samples-bool", MINIMAL + "samples: true\n", ["samples: got true", "an integer >= 1"]),
    ("samples-zero", MINIMAL + "samples: 0\n", ["samples: got 0", "an integer >= 1 and <= 100000"]),
    ("samples-big", MINIMAL + "samples: 100001\n", ["samples: got 100001", "<= 100000"]),
    ("samples-float", MINIMAL + "samples: 2.5\n", ["samples: got 2.5", "an integer"]),
    ("samples-text", MINIMAL + "samples: '5'\n", ["samples: got '5'", "without quotes"]),
    ("seed-negative", MINIMAL + "seed: -1\n", ["seed: got -1", "an integer >= 0"]),
    ("model-missing", NET, ["model: missing", "one of fashion_cnn, mobilenet_v2"]),
    (
        "model-unknown",
        NET + "model: fashion_cn\n",
        [
            "model: got 'fashion_cn'",
            "one of fashion_cnn, mobilenet_v2",
            "did you mean 'fashion_cnn'",
        ],
    ),
    ("name-empty", MINIMAL + "name: ''\n", ["name: got ''", "a non-empty string"]),
    ("name-number", MINIMAL + "name: 5\n", ["name: got 5", "a non-empty string"]),
    ("timeout-zero", MINIMAL + "request_timeout_s: 0\n", ["request_timeout_s: got 0", "> 0"]),
    ("timeout-inf", MINIMAL + "request_timeout_s: .inf\n", ["request_timeout_s: got inf", "> 0"]),
    ("arrival-word", MINIMAL + "arrival: open\n", ["arrival: got 'open'", "closed, or a mapping"]),
    ("arrival-poisson-word", MINIMAL + "arrival: poisson\n", ["arrival: got 'poisson'", "rate_hz"]),
    (
        "arrival-no-rate",
        MINIMAL + "arrival: {process: poisson}\n",
        ["arrival.rate_hz: missing", "a number > 0"],
    ),
    (
        "arrival-rate",
        MINIMAL + "arrival: {process: poisson, rate_hz: -2}\n",
        ["arrival.rate_hz: got -2", "a number > 0"],
    ),
    (
        "arrival-process",
        MINIMAL + "arrival: {process: poison, rate_hz: 2}\n",
        ["arrival.process: got 'poison'", "one of closed, poisson", "did you mean 'poisson'"],
    ),
    (
        "arrival-closed-rate",
        MINIMAL + "arrival: {process: closed, rate_hz: 2}\n",
        ["arrival.rate_hz: unknown key", "allowed: process"],
    ),
    (
        "test-data-missing-folder",
        MINIMAL + "test_data: no/such/photos\n",
        ["test_data: got 'no/such/photos'", "does not exist", "an existing folder"],
    ),
    (
        "test-data-a-file",
        MINIMAL + "test_data: scenario.yaml\n",
        ["test_data: got 'scenario.yaml'", "is a file", "an existing folder"],
    ),
    ("max-drop-negative", MINIMAL + "max_drop_pp: -1\n", ["max_drop_pp: got -1", ">= 0"]),
    ("device-cpu-zero", MINIMAL + "device: {cpu: 0}\n", ["device.cpu: got 0", "a number > 0"]),
    ("edge-cpu-negative", MINIMAL + "edge: {cpu: -1}\n", ["edge.cpu: got -1", "a number > 0"]),
    ("device-cpu-too-many", MINIMAL + "device: {cpu: 100000}\n", ["device.cpu: got 100000", "<= "]),
    (
        "device-key",
        MINIMAL + "device: {cpus: 1}\n",
        ["device.cpus: unknown key", "allowed: cpu", "did you mean 'cpu'"],
    ),
    (
        "device-not-mapping",
        MINIMAL + "device: 0.2\n",
        ["device: got 0.2", "a mapping with keys cpu"],
    ),
    ("network-missing", M, ["network: missing", "a mapping with keys uplink, downlink, trace"]),
    (
        "uplink-missing",
        M + "network: {downlink: {bandwidth_mbps: 1}}\n",
        ["network.uplink: missing"],
    ),
    (
        "bandwidth-missing",
        M + "network:\n  uplink: {delay_ms: 5}\n",
        ["network.uplink.bandwidth_mbps: missing", "unless network.trace", "a number > 0"],
    ),
    (
        "bandwidth-zero",
        M + "network:\n  uplink: {bandwidth_mbps: 0}\n",
        ["network.uplink.bandwidth_mbps: got 0", "a number > 0 and <= 10000"],
    ),
    (
        "bandwidth-big",
        M + "network:\n  uplink: {bandwidth_mbps: 10001}\n",
        ["network.uplink.bandwidth_mbps: got 10001", "<= 10000"],
    ),
    (
        "bandwidth-e-notation",
        M + "network:\n  uplink: {bandwidth_mbps: 1e3}\n",
        ["network.uplink.bandwidth_mbps: got '1e3'", "a number", "write 1.0e3"],
    ),
    (
        "bandwidth-bool",
        M + "network:\n  uplink: {bandwidth_mbps: yes}\n",
        ["network.uplink.bandwidth_mbps: got true", "a number > 0"],
    ),
    (
        "delay-negative",
        MINIMAL.replace("10}", "10, delay_ms: -1}"),
        ["network.uplink.delay_ms: got -1", "a number >= 0 and <= 10000"],
    ),
    (
        "jitter-big",
        MINIMAL.replace("10}", "10, jitter_ms: 10001}"),
        ["network.uplink.jitter_ms: got 10001", "<= 10000"],
    ),
    (
        "loss-100",
        MINIMAL.replace("10}", "10, loss_pct: 100}"),
        ["network.uplink.loss_pct: got 100", "a number >= 0 and < 100"],
    ),
    (
        "queue-zero",
        MINIMAL.replace("10}", "10, queue_packets: 0}"),
        ["network.uplink.queue_packets: got 0", "an integer >= 1 and <= 100000"],
    ),
    (
        "queue-float",
        MINIMAL.replace("10}", "10, queue_packets: 1.5}"),
        ["network.uplink.queue_packets: got 1.5", "an integer"],
    ),
    (
        "downlink-typo",
        MINIMAL + "  downlink: {bandwidth_mbps: 5, dealy_ms: 3}\n",
        ["network.downlink.dealy_ms: unknown key", "delay_ms", "did you mean 'delay_ms'"],
    ),
    (
        "network-typo",
        MINIMAL + "  uplnk: {bandwidth_mbps: 5}\n",
        ["network.uplnk: unknown key", "did you mean 'uplink'"],
    ),
    (
        "trace-missing-file",
        M + "network:\n  uplink: {}\n  trace: {uplink: nope.up, downlink: nope.down}\n",
        ["network.trace.uplink: got 'nope.up'", "nope.up does not exist", "an existing file"],
    ),
    (
        "trace-one-direction",
        M + "network:\n  uplink: {}\n  trace: {uplink: scenario.yaml}\n",
        ["network.trace.downlink: missing", "a path to an existing file"],
    ),
    (
        "trace-with-bandwidth",
        MINIMAL + "  trace: {uplink: scenario.yaml, downlink: scenario.yaml}\n",
        ["network.uplink.bandwidth_mbps: got 10", "no bandwidth_mbps with network.trace"],
    ),
    ("traffic-not-list", MINIMAL + "traffic: tcp_bulk\n", ["traffic: got 'tcp_bulk'", "a list"]),
    (
        "traffic-no-type",
        MINIMAL + "traffic: [{flows: 2}]\n",
        ["traffic[0].type: missing", "one of tcp_bulk, udp_cbr, udp_onoff, poisson"],
    ),
    (
        "traffic-type",
        MINIMAL + "traffic: [{type: tcp_blk}]\n",
        ["traffic[0].type: got 'tcp_blk'", "tcp_bulk, udp_cbr", "did you mean 'tcp_bulk'"],
    ),
    (
        "traffic-rate-missing",
        MINIMAL + "traffic:\n  - {type: tcp_bulk}\n  - {type: udp_cbr}\n",
        ["traffic[1].rate_mbps: missing", "a number > 0"],
    ),
    (
        "traffic-direction",
        MINIMAL + "traffic: [{type: tcp_bulk, direction: sideways}]\n",
        ["traffic[0].direction: got 'sideways'", "one of up, down"],
    ),
    (
        "traffic-flows",
        MINIMAL + "traffic: [{type: tcp_bulk, flows: 0}]\n",
        ["traffic[0].flows: got 0", "an integer >= 1"],
    ),
    (
        "traffic-stop-before-start",
        MINIMAL + "traffic: [{type: tcp_bulk, start_s: 5, stop_s: 2}]\n",
        ["traffic[0].stop_s: got 2", "> start_s (5)", "or null"],
    ),
    (
        "traffic-stop-text",
        MINIMAL + "traffic: [{type: tcp_bulk, stop_s: later}]\n",
        ["traffic[0].stop_s: got 'later'", "a number >= 0, or null"],
    ),
    (
        "traffic-distribution",
        MINIMAL
        + "traffic: [{type: udp_onoff, rate_mbps: 1, on_s: 1, off_s: 1, distribution: normal}]\n",
        ["traffic[0].distribution: got 'normal'", "one of exponential, pareto"],
    ),
    (
        "traffic-onoff-zero",
        MINIMAL + "traffic: [{type: udp_onoff, rate_mbps: 1, on_s: 0, off_s: 1}]\n",
        ["traffic[0].on_s: got 0", "a number > 0"],
    ),
    (
        "traffic-packet-bytes",
        MINIMAL + "traffic: [{type: poisson, rate_hz: 5, packet_bytes: 20}]\n",
        ["traffic[0].packet_bytes: got 20", "an integer >= 64 and <= 1500"],
    ),
    (
        "traffic-key-of-other-type",
        MINIMAL + "traffic: [{type: tcp_bulk, rate_mbps: 3}]\n",
        ["traffic[0].rate_mbps: unknown key for traffic type 'tcp_bulk'", "flows, direction"],
    ),
    ("offloaders-empty", MINIMAL + "offloaders: []\n", ["offloaders: got []", "a non-empty list"]),
    (
        "offloaders-unknown",
        MINIMAL + "offloaders: [local, locl]\n",
        ["offloaders[1]: got 'locl'", "one of local, raw", "did you mean 'local'"],
    ),
    (
        "offloaders-no-name",
        MINIMAL + "offloaders: [{quality: 5}]\n",
        ["offloaders[0].name: missing", "one of local, raw"],
    ),
    (
        "offloaders-bad-name",
        MINIMAL + "offloaders: [{name: jpg}]\n",
        ["offloaders[0].name: got 'jpg'", "one of local, raw"],
    ),
    (
        "offloaders-item-type",
        MINIMAL + "offloaders: [local, 3]\n",
        ["offloaders[1]: got 3", "an offloader name or a mapping"],
    ),
    (
        "offloaders-duplicate",
        MINIMAL + "offloaders: [local, raw, local]\n",
        ["offloaders[2]: got 'local'", "as offloaders[0]", "each configuration once"],
    ),
    (
        "offloaders-duplicate-after-defaults",
        MINIMAL + "offloaders: [fakejpeg, {name: fakejpeg, quality: 75}]\n",
        ["offloaders[1]: got {name: fakejpeg, quality: 75}", "as offloaders[0]"],
    ),
    (
        "offloader-param-value",
        MINIMAL + "offloaders: [local, raw, {name: fakejpeg, quality: 0}]\n",
        ["offloaders[2].quality: got 0", "an integer from 1 to 100"],
    ),
    (
        "offloader-param-type",
        MINIMAL + "offloaders: [{name: fakejpeg, quality: high}]\n",
        ["offloaders[0].quality: got 'high'", "an integer from 1 to 100"],
    ),
    (
        "offloader-param-unknown",
        MINIMAL + "offloaders: [{name: fakejpeg, qualty: 50}]\n",
        [
            "offloaders[0].qualty: unknown parameter of offloader 'fakejpeg'",
            "did you mean 'quality'",
        ],
    ),
    (
        "offloader-no-params",
        MINIMAL + "offloaders: [{name: raw, quality: 50}]\n",
        ["offloaders[0].quality: unknown parameter of offloader 'raw'", "allowed: name"],
    ),
    ("expect-not-list", MINIMAL + "expect: 'a < b'\n", ["expect: got 'a < b'", "a list of"]),
    ("expect-item", MINIMAL + "expect: ['a < b', 3]\n", ["expect[1]: got 3", "a non-empty string"]),
    (
        "top-typo",
        MINIMAL + "sampels: 5\n",
        ["sampels: unknown key", "allowed: name, seed, model, samples", "did you mean 'samples'"],
    ),
    (
        "duplicate-key",
        MINIMAL + "  uplink: {bandwidth_mbps: 20}\n",
        ["scenario.yaml:4: network.uplink: duplicate key (first at line 3)"],
    ),
    ("duplicate-top-key", MINIMAL + "model: x\n", ["scenario.yaml:4: model: duplicate key"]),
    ("yaml-syntax", M + "network: {uplink: [\n", ["scenario.yaml:3:1: invalid YAML"]),
    ("yaml-tab", M + "network:\n\tuplink: 1\n", ["scenario.yaml:3:1: invalid YAML"]),
    ("yaml-python-tag", MINIMAL + "seed: !!python/object:os.system x\n", ["invalid YAML"]),
    ("yaml-two-documents", MINIMAL + "---\n" + MINIMAL, ["2 YAML documents", "one scenario"]),
    ("empty", "", ["the file is empty"]),
    ("comments-only", "# nothing here\n", ["the file is empty"]),
    ("top-list", "- model: x\n", ["top level: got [{model: x}]", "a mapping with keys"]),
    ("top-scalar", "hello\n", ["top level: got 'hello'", "a mapping"]),
    ("not-utf8", b"model: \xff\xfe\n", ["scenario.yaml:1: not UTF-8", "0xff"]),
]


@pytest.mark.parametrize(("text", "needles"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_scenario_message(tmp_path, text, needles):
    path = write(tmp_path, text)
    message = error_of(path)
    assert message.startswith(str(path)), message
    for needle in needles:
        assert needle in message, message
    assert len(message.splitlines()) <= 2, message
    assert "Traceback" not in message


def test_bad_case_table_is_large_and_unique():
    assert len(BAD) >= 25
    assert len({c[0] for c in BAD}) == len(BAD)


def test_error_names_the_line_of_the_key(tmp_path):
    text = "model: fashion_cnn\nnetwork:\n  uplink:\n    delay_ms: 5\n    bandwidth_mbps: -3\n"
    message = error_of(write(tmp_path, text))
    assert message.startswith(f"{tmp_path / 'scenario.yaml'}:5: network.uplink.bandwidth_mbps:")


def test_missing_file_and_directory(tmp_path):
    assert "no such scenario file" in error_of(tmp_path / "absent.yaml")
    assert "is a directory" in error_of(tmp_path)


def test_scenario_error_exit_status():
    assert ScenarioError.exit_status == 2


def test_trace_error_names_the_resolved_path(tmp_path):
    text = M + "network:\n  uplink: {}\n  trace: {uplink: t/a.up, downlink: t/a.down}\n"
    message = error_of(write(tmp_path / "sc", text))
    assert str((tmp_path / "sc" / "t" / "a.up").resolve()) in message


# ------------------------------------------------------------------ good scenarios


def test_minimal_scenario_resolves_with_defaults(tmp_path):
    s = load_scenario(write(tmp_path, MINIMAL, "lowbw.yaml"))
    link = LinkSpec(bandwidth_mbps=10.0, delay_ms=0.0, jitter_ms=0.0, loss_pct=0.0)
    assert s == Scenario(
        name="lowbw",
        seed=1,
        model="fashion_cnn",
        samples=100,
        arrival={"process": "closed"},
        device=HostSpec(cpu=1.0, cpu_mode="dilate"),
        edge=HostSpec(cpu=1.0),
        network=NetworkSpec(uplink=link, downlink=link, trace=None),
        traffic=(),
        offloaders=(OffloaderSpec("local", {}), OffloaderSpec("raw", {})),
        expect=(),
        request_timeout_s=30.0,
        source=tmp_path / "lowbw.yaml",
    )
    assert s.source == (tmp_path / "lowbw.yaml").absolute()
    assert isinstance(s.network.uplink.bandwidth_mbps, float)
    assert isinstance(s.network.uplink.queue_packets, int)
    assert isinstance(s.request_timeout_s, float)


DESIGN_EXAMPLE = """\
name: lowbw
seed: 7
model: fashion_cnn              # plugin name
samples: 200
arrival: {process: poisson, rate_hz: 4}
device: {cpu: 0.2}
edge:   {cpu: 1}
network:
  uplink:   {bandwidth_mbps: 1, delay_ms: 20, jitter_ms: 0, loss_pct: 0.5, queue_packets: 50}
  downlink: {bandwidth_mbps: 2, delay_ms: 20}
traffic:
  - {type: tcp_bulk, flows: 2, direction: up, start_s: 0}
  - {type: udp_onoff, rate_mbps: 0.5, on_s: 1, off_s: 1}
  - {type: udp_cbr, rate_mbps: 3, direction: down, start_s: 1.5, stop_s: 9}
  - {type: poisson, rate_hz: 20}
offloaders: [local, raw, {name: fakejpeg, quality: 75}, {name: fakejpeg, quality: 30}]
expect:
  - fakejpeg.p50_ms < 0.5 * raw.p50_ms
request_timeout_s: 5
"""


def test_full_scenario_resolves(tmp_path):
    s = load_scenario(write(tmp_path, DESIGN_EXAMPLE))
    assert (s.name, s.seed, s.samples, s.request_timeout_s) == ("lowbw", 7, 200, 5.0)
    assert s.arrival == {"process": "poisson", "rate_hz": 4.0}
    assert s.device == HostSpec(0.2, "dilate") and s.edge == HostSpec(1.0)
    assert s.network.uplink == LinkSpec(
        bandwidth_mbps=1.0, delay_ms=20.0, jitter_ms=0.0, loss_pct=0.5, queue_packets=50
    )
    assert s.network.downlink == LinkSpec(
        bandwidth_mbps=2.0, delay_ms=20.0, jitter_ms=0.0, loss_pct=0.0, queue_packets=100
    )
    window = {"direction": "up", "start_s": 0.0, "stop_s": None}
    assert s.traffic == (
        {"type": "tcp_bulk", "flows": 2, **window},
        {
            "type": "udp_onoff",
            "rate_mbps": 0.5,
            "on_s": 1.0,
            "off_s": 1.0,
            "distribution": "exponential",
            **window,
        },
        {"type": "udp_cbr", "rate_mbps": 3.0, "direction": "down", "start_s": 1.5, "stop_s": 9.0},
        {"type": "poisson", "rate_hz": 20.0, "train_packets": 10, "packet_bytes": 1000, **window},
    )
    assert s.offloaders == (
        OffloaderSpec("local", {}),
        OffloaderSpec("raw", {}),
        OffloaderSpec("fakejpeg", {"quality": 75}),
        OffloaderSpec("fakejpeg", {"quality": 30}),
    )
    assert s.expect == ("fakejpeg.p50_ms < 0.5 * raw.p50_ms",)


def test_downlink_defaults_to_a_copy_of_uplink(tmp_path):
    s = load_scenario(write(tmp_path, MINIMAL.replace("10}", "10, delay_ms: 40, loss_pct: 1}")))
    assert (
        s.network.downlink
        == s.network.uplink
        == LinkSpec(
            bandwidth_mbps=10.0, delay_ms=40.0, jitter_ms=0.0, loss_pct=1.0, queue_packets=100
        )
    )


def test_the_link_keys_are_the_declared_link_settings(tmp_path):
    """The schema's link record is derived from LinkSpec: same keys, same defaults."""
    assert list(LINK.fields) == [f.name for f in dataclasses.fields(LinkSpec)]
    s = load_scenario(write(tmp_path, MINIMAL))
    assert s.network.uplink == LinkSpec(bandwidth_mbps=10.0)


def test_offloader_params_get_defaults(tmp_path):
    s = load_scenario(write(tmp_path, MINIMAL + "offloaders: [fakejpeg, {name: local}]\n"))
    assert s.offloaders == (OffloaderSpec("fakejpeg", {"quality": 75}), OffloaderSpec("local", {}))


def test_arrival_forms(tmp_path):
    for text in ("closed", "{process: closed}"):
        s = load_scenario(write(tmp_path, MINIMAL + f"arrival: {text}\n"))
        assert s.arrival == {"process": "closed"}


def test_scenario_is_frozen(tmp_path):
    s = load_scenario(write(tmp_path, MINIMAL))
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.samples = 3  # type: ignore[misc]


def test_parse_scenario_takes_loaded_data(tmp_path):
    s = parse_scenario(yaml.safe_load(DESIGN_EXAMPLE), tmp_path / "x.yaml")
    assert s == load_scenario(write(tmp_path, DESIGN_EXAMPLE))
    with pytest.raises(ScenarioError, match=r"x\.yaml: samples: got true"):
        parse_scenario({**yaml.safe_load(MINIMAL), "samples": True}, tmp_path / "x.yaml")


# ------------------------------------------------------------------ traces and paths


def make_traces(folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    up, down = folder / "x.up", folder / "x.down"
    up.write_text("1\n2\n3\n")
    down.write_text("1\n1\n2\n")
    return up, down


TRACE = M + "network:\n  uplink: {delay_ms: 10}\n  trace: {uplink: %s, downlink: %s}\n"


def test_relative_trace_paths_follow_the_scenario_file(tmp_path, monkeypatch):
    up, down = make_traces(tmp_path / "scen" / "traces")
    path = write(tmp_path / "scen", TRACE % ("traces/x.up", "traces/x.down"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    s = load_scenario(path)
    assert s.network.trace == {"uplink": up.resolve(), "downlink": down.resolve()}
    assert all(p.is_absolute() for p in s.network.trace.values())
    assert s.network.uplink == LinkSpec(
        bandwidth_mbps=None, delay_ms=10.0, jitter_ms=0.0, loss_pct=0.0, queue_packets=100
    )
    assert s.network.downlink == s.network.uplink


def test_test_data_folder_is_relative_to_the_scenario_file(tmp_path, monkeypatch):
    (tmp_path / "photos").mkdir()
    (tmp_path / "s.yaml").write_text(MINIMAL + "test_data: photos\nmax_drop_pp: 2.5\n")
    monkeypatch.chdir(REPO)
    scenario = load_scenario(tmp_path / "s.yaml")
    assert scenario.test_data == (tmp_path / "photos").resolve()
    assert scenario.max_drop_pp == 2.5
    assert parse_scenario(scenario.to_dict(), scenario.source) == scenario
    assert load_scenario(REPO / "scenarios" / "lowbw.yaml").test_data is None


def test_relative_scenario_path_and_absolute_trace(tmp_path, monkeypatch):
    up, down = make_traces(tmp_path / "traces")
    write(tmp_path / "scen", TRACE % (up, down))
    monkeypatch.chdir(tmp_path)
    s = load_scenario("scen/scenario.yaml")
    assert s.network.trace == {"uplink": up.resolve(), "downlink": down.resolve()}
    assert s.source == tmp_path / "scen" / "scenario.yaml"


# ------------------------------------------------------------------ round trip


@pytest.mark.parametrize("text", [MINIMAL, DESIGN_EXAMPLE, "trace"], ids=["min", "full", "trace"])
def test_to_dict_round_trip(tmp_path, text):
    if text == "trace":
        make_traces(tmp_path / "scen" / "traces")
        text = TRACE % ("traces/x.up", "traces/x.down")
    s = load_scenario(write(tmp_path / "scen", text))
    dumped = yaml.safe_dump(s.to_dict(), sort_keys=False)
    again = load_scenario(write(tmp_path / "results", dumped, "resolved_scenario.yaml"))
    assert again == s
    assert again.to_dict() == s.to_dict()
    assert list(s.to_dict()) == list(again.to_dict())


def test_to_dict_is_plain_data(tmp_path):
    make_traces(tmp_path / "traces")
    d = load_scenario(write(tmp_path, TRACE % ("traces/x.up", "traces/x.down"))).to_dict()
    assert yaml.safe_load(yaml.safe_dump(d)) == d
    assert isinstance(d["network"]["trace"]["uplink"], str)
    assert "bandwidth_mbps" not in d["network"]["uplink"]
    assert set(d) == {k for k in key_paths() if "." not in k and "[" not in k} - {"test_data"}


# ------------------------------------------------------------------ docs


def test_reference_documents_every_key():
    docs = (REPO / "docs" / "scenarios.md").read_text()
    for path in key_paths():
        leaf = path.rsplit(".", 1)[-1].removesuffix("[]")
        assert f"`{leaf}`" in docs, f"docs/scenarios.md does not mention `{leaf}` ({path})"


# ------------------------------------------------------------------ command line


@pytest.mark.skipif(
    not (REPO / "run_scenario.py").exists(), reason="run_scenario.py is not written yet"
)
@pytest.mark.parametrize(
    "text",
    [MINIMAL + "samples: true\n", "network: [\n", MINIMAL + "sampels: 5\n"],
    ids=["value", "syntax", "unknown-key"],
)
def test_run_scenario_rejects_bad_file(tmp_path, text):
    path = write(tmp_path, text)
    proc = subprocess.run(
        [sys.executable, str(REPO / "run_scenario.py"), str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert 1 <= len(proc.stderr.strip().splitlines()) <= 3, proc.stderr
    assert str(path.name) in proc.stderr
