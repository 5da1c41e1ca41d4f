"""Adaptive DeepCOD (`ratios: [...]`): its parameters, its decision rule on constructed
profiles and link estimates, payloads of every ratio through the edge half, and its
calibration and profiles on fashion_cnn's shipped networks (ratios 0.1, 0.25 and 1)."""

from __future__ import annotations

import json

import pytest

from testbed import offloaders
from testbed.errors import PluginError
from testbed.models import plugins
from testbed.offloaders.base import PhaseTimer
from testbed.offloaders.link_estimate import LinkEstimate
from testbed.offloaders.params import ParamError

RTT_MS = 40.0
RATIOS = [0.25, 0.1, 1]  # any order: both halves sort them


def link_at(mbps: float) -> LinkEstimate:
    """An estimate that has seen RTT_MS and one 100 KB upload at `mbps`."""
    link = LinkEstimate()
    link.observe_rtt(RTT_MS)
    nbytes = 100_000
    link.observe_upload(nbytes, nbytes * 8 / (mbps * 1000) + RTT_MS / 2)
    assert link.uplink_mbps == pytest.approx(mbps)
    return link


def adaptive(fashion, **params):
    plugin, model, _ = fashion
    params = offloaders.validate_params("deepcod", {"ratios": RATIOS, **params})
    return offloaders.get("deepcod")(plugin, model, **params)


def option(ratio, mean_bytes, drop_pp, bound=1.0):
    return {
        "ratio": ratio,
        "drop_pp": drop_pp,
        "mean_bytes": mean_bytes,
        "within_bound": drop_pp <= bound,
    }


def constructed(fashion, options, device_model_ms, mbps, edge_ms=None, **params):
    """An adaptive deepcod with these calibrated options and profiles, on `mbps`."""
    offloader = adaptive(fashion, **params)
    offloader.options = options
    offloader.device_model_ms = device_model_ms
    offloader.encode_ms = {"0.1": 2.0, "0.25": 3.0, "1": 6.0}
    edge = {"edge_ms": edge_ms or {"0.1": 10.0, "0.25": 10.0, "1": 10.0}}
    offloader.connect(json.loads(json.dumps(edge)), link_at(mbps))
    return offloader


# 0.1 loses most; 1 keeps nearly everything but sends 10x the bytes
OPTIONS = [option(0.1, 1_000, 30.0), option(0.25, 2_500, 8.0), option(1.0, 10_000, 0.5)]


def kind(choice: dict) -> str:
    return "probe" if choice.get("probe") else str(choice.get("ratio", choice.get("mode")))


# ------------------------------------------------------------------------ parameters


def test_ratios_and_ratio_exclude_each_other_and_are_checked():
    with pytest.raises(ParamError, match=r"ratios: not together with ratio \(0.25\)"):
        offloaders.validate_params("deepcod", {"ratio": 0.25, "ratios": [0.1, 0.25]})
    for bad in ([0.1, 0.1], [0.0], [1.5], ["0.1"], [True], 0.1, [0.1] * 9):
        with pytest.raises(ParamError, match="ratios: got"):
            offloaders.validate_params("deepcod", {"ratios": bad})
    # checking its own output again changes nothing; plain deepcod is as before
    once = offloaders.validate_params("deepcod", {"ratios": [0.05, 0.1]})
    assert offloaders.validate_params("deepcod", once) == once
    assert offloaders.validate_params("deepcod", {"ratio": 0.25})["ratios"] == []


def test_both_in_a_scenario_is_one_error_at_its_key(tmp_path):
    from testbed.config.scenario import parse_scenario
    from testbed.errors import ScenarioError

    data = {
        "name": "both",
        "model": "fashion_cnn",
        "network": {"uplink": {"bandwidth_mbps": 1}},
        "offloaders": ["raw", {"name": "deepcod", "ratio": 0.25, "ratios": [0.1, 1]}],
    }
    with pytest.raises(ScenarioError, match=r"offloaders\[1\]\.ratios: not together with ratio"):
        parse_scenario(data, tmp_path / "both.yaml")
    data["offloaders"][1].pop("ratio")
    parsed = parse_scenario(data, tmp_path / "both.yaml").offloaders[1]
    assert parsed.params["ratios"] == [0.1, 1] and parsed.params["ratio"] == 0.1


def test_a_missing_ratio_names_its_training_command(fashion):
    with pytest.raises(PluginError, match=r"deepcod\.train --plugin fashion_cnn --ratio 0\.5"):
        adaptive(fashion, ratios=[0.1, 0.5])


# ------------------------------------------------------------------------ decision rule


def test_the_fastest_option_within_the_bound_wins_and_local_when_the_link_is_slow(fashion):
    # a loose bound: every ratio qualifies, the smallest payload is fastest at any rate
    loose = [option(o["ratio"], o["mean_bytes"], o["drop_pp"], bound=50) for o in OPTIONS]
    fast = constructed(fashion, loose, 500.0, mbps=10, max_drop_pp=50)
    index, choice = fast.choose()
    assert fast.ratios[index] == 0.1 and choice["ratio"] == 0.1
    # 2 encode + 0.8 upload + 20 one way + 10 edge + 20 reply
    assert choice["predicted_ms"] == pytest.approx(2 + 0.8 + 20 + 10 + 20, abs=0.01)
    assert choice["est_mbps"] == pytest.approx(10)
    # the default bound (1 point) leaves ratio 1 only: chosen on a fast link ...
    fast = constructed(fashion, OPTIONS, 500.0, mbps=10)
    assert [c.get("ratio") for c in fast.candidates()] == [None, 1.0]
    assert fast.choose()[1]["ratio"] == 1.0
    # ... and local on a slow one (10 KB at 0.1 Mbit/s: 800 ms on the wire)
    slow = constructed(fashion, OPTIONS, 500.0, mbps=0.1)
    index, choice = slow.choose()
    assert index is None
    assert choice == {"mode": "local", "predicted_ms": 500.0, "est_mbps": 0.1}


def test_a_cheaper_decode_can_make_a_larger_ratio_the_fastest(fashion):
    loose = [option(o["ratio"], o["mean_bytes"], o["drop_pp"], bound=50) for o in OPTIONS]
    edge_ms = {"0.1": 200.0, "0.25": 10.0, "1": 10.0}
    fast = constructed(fashion, loose, 500.0, mbps=50, edge_ms=edge_ms, max_drop_pp=50)
    assert fast.choose()[1]["ratio"] == 0.25
    # on a slow link 0.25's 2.5 KB cost more than 0.1's slow decode saves
    slow = constructed(fashion, loose, 5000.0, mbps=0.05, edge_ms=edge_ms, max_drop_pp=50)
    assert slow.choose()[1]["ratio"] == 0.1


def test_nothing_within_the_bound_is_local_whatever_the_link(fashion):
    far = [option(o["ratio"], o["mean_bytes"], o["drop_pp"], bound=0.1) for o in OPTIONS]
    offloader = constructed(fashion, far, 500.0, mbps=100, max_drop_pp=0.1)
    assert all(offloader.choose()[1]["mode"] == "local" for _ in range(30))  # no probes


def test_probes_refresh_the_estimate_after_local_requests(fashion):
    offloader = constructed(fashion, OPTIONS, 300.0, mbps=0.05, probe_every=3)
    choices = [offloader.choose()[1] for _ in range(8)]
    assert [kind(c) for c in choices] == ["local"] * 3 + ["probe"] + ["local"] * 3 + ["probe"]
    assert choices[3]["ratio"] == 1.0  # the fastest offload option
    # the link recovered: the probe's upload moved the estimate (still slow), so probe again
    offloader.link.observe_upload(100_000, 100_000 * 8 / 10_000 + RTT_MS / 2)
    assert kind(offloader.choose()[1]) == "probe"
    for _ in range(8):  # until the pooled estimate says 10 Mbit/s: offloading wins outright
        offloader.link.observe_upload(100_000, 100_000 * 8 / 10_000 + RTT_MS / 2)
    assert kind(offloader.choose()[1]) == "1.0"


def test_the_prior_serves_until_an_upload_is_measured(fashion):
    offloader = constructed(fashion, OPTIONS, 300.0, mbps=1, prior_mbps=50.0)
    offloader.link = LinkEstimate()
    index, choice = offloader.choose()
    assert index is not None and choice["est_mbps"] is None and "est_untrusted" in choice


# ------------------------------------------------------------------ halves and payloads


def test_a_payload_of_every_ratio_decodes_at_the_edge(fashion):
    plugin, _, data = fashion
    device, edge = adaptive(fashion), adaptive(fashion)
    assert device.ratios == [0.1, 0.25, 1.0]
    sizes = {}
    for index, ratio in enumerate(device.ratios):
        fixed = offloaders.get("deepcod")(plugin, device.model, ratio=ratio)
        device.choose = lambda index=index: (index, {"ratio": device.ratios[index]})
        for sample in data.inputs[:3]:
            sent = device.device(sample, PhaseTimer())
            assert sent.payload[0] == index and sent.choice == {"ratio": ratio}
            # the blob after the byte is the fixed-ratio offloader's, and decodes alike
            assert sent.payload[1:] == fixed.device(sample, PhaseTimer()).payload
            timer = PhaseTimer()
            assert edge.edge(sent.payload, timer) == fixed.edge(sent.payload[1:], PhaseTimer())
            assert set(timer.ms) == {"decode", "edge"}
            sizes[ratio] = len(sent.payload)
        assert len(sent.payload) <= edge.max_payload()
    assert sizes[0.1] < sizes[0.25] < sizes[1.0]
    assert edge.max_payload() == 1 + max(c.max_payload() for c in edge.codecs)


def test_the_edge_refuses_an_unknown_ratio_byte_and_a_long_payload(fashion):
    _, _, data = fashion
    device, edge = adaptive(fashion), adaptive(fashion)
    device.choose = lambda: (0, {"ratio": 0.1})
    payload = device.device(data.inputs[0], PhaseTimer()).payload
    for bad in (b"", bytes([3]) + payload[1:], bytes([255]) + payload[1:]):
        with pytest.raises(ValueError, match="names no ratio"):
            edge.edge(bad, PhaseTimer())
    with pytest.raises(ValueError, match="at most"):
        edge.edge(payload + bytes(edge.max_payload()), PhaseTimer())
    with pytest.raises(ValueError, match="deepcod payload"):  # ratio 1's blob read as 0.1's
        edge.edge(bytes([0]) + payload[1:] + b"\x00" * 50, PhaseTimer())


def test_local_choice_runs_the_whole_model_on_the_device(fashion):
    _, _, data = fashion
    device = adaptive(fashion)
    device.choose = lambda: (None, {"mode": "local"})
    timer = PhaseTimer()
    result = device.device(data.inputs[0], timer)
    assert result.payload is None and 0 <= result.prediction < 10
    assert set(timer.ms) == {"device"}


def test_calibration_and_profiles_travel_in_describe(fashion, cache):
    edge = adaptive(fashion, calibration_samples=20)
    edge.prepare("edge")
    described = json.loads(json.dumps(edge.describe()))  # as it crosses the wire
    assert set(described["edge_ms"]) == {"0.1", "0.25", "1"}
    assert all(ms > 0 for ms in described["edge_ms"].values())
    device = adaptive(fashion, calibration_samples=20, max_drop_pp=100)
    device.prepare("device")
    device.connect(described, link_at(2))
    out = device.describe()
    assert [o["ratio"] for o in out["options"]] == [0.1, 0.25, 1.0]
    assert all(o["within_bound"] and o["mean_bytes"] > 0 for o in out["options"])
    sizes = [o["mean_bytes"] for o in out["options"]]
    assert sizes == sorted(sizes)
    assert set(out["device_encode_ms"]) == {"0.1", "0.25", "1"} and out["device_model_ms"] > 0
    # the scores are cached per artefact: a second offloader measures nothing
    again = adaptive(fashion, calibration_samples=20, max_drop_pp=100)
    assert again.calibrate() == out["options"]
    assert len(list((cache / "calibration").glob("fashion_cnn-deepcod-*.json"))) == 3


def test_a_fixed_ratio_is_unchanged(fashion, cache):
    plugin, model, _ = fashion
    fixed = offloaders.get("deepcod")(plugin, model, ratio=0.1)
    fixed.prepare("device")
    fixed.prepare("edge")
    assert fixed.calibrate() is None and not fixed.adaptive
    assert "options" not in fixed.describe() and fixed.describe()["measurements"] == [1, 7, 7]
    assert not (cache / "calibration").exists()


@pytest.fixture(scope="module")
def fashion():
    from tests.helpers import loaded

    plugin, model, data = loaded("fashion_cnn")
    assert plugins.get("fashion_cnn").artefact_file("deepcod-r1").is_file()
    return plugin, model, data
