"""The typed contracts between the runner and the device agent: JSON round trips, clear
errors for bad job files, and the committed results' files read back unchanged."""

from __future__ import annotations

import dataclasses
import json

import pytest

from testbed import errors
from testbed.agents import contract
from testbed.agents.contract import ContractError, DeviceJob, DeviceMeta, RequestRecord
from testbed.results import records as results
from tests.helpers import ROOT

RESULTS = ROOT / "docs" / "results"


def job(**changes) -> DeviceJob:
    fields = {
        "plugin": "fashion_cnn",
        "test_data": None,
        "offloaders": (
            contract.OffloaderJob(name="raw", params={}, label="raw"),
            contract.OffloaderJob(name="jpeg", params={"quality": 50}, label="jpeg"),
        ),
        "samples": (3, 1, 4),
        "edge_host": "10.0.0.2",
        "edge_port": 5000,
        "timeout_s": 30,
        "threads": 1,
        "warmup": 2,
        "pings": 5,
        "arrival": contract.Arrival(process="poisson", rate_hz=12.5),
        "seed": 7,
        "device_index": 1,
        "devices": 2,
        "barrier": "/tmp/barrier",
        "records": "out/records-d1.jsonl",
        "meta": "out/logs/device_meta-d1.json",
        "loaded": "out/logs/device_loaded-d1",
        "cgroup": "d1",
    }
    return DeviceJob(**{**fields, **changes})


def record(**changes) -> RequestRecord:
    fields = {
        "offloader": "raw",
        "device": 0,
        "request": 3,
        "sample": 48,
        "label": 240,
        "intended_ms": 0.0,
        "queue_ms": 0.0,
        "device_ms": 0.0,
        "encode_ms": 0.03,
        "uplink_ms": 1279.9,
        "decode_ms": 0.01,
        "edge_ms": 20.7,
        "downlink_ms": 21.4,
        "bytes_up": 150544,
        "bytes_down": 52,
        "est_uplink_mbps": None,
        "choice": "",
        "stream": (40634, 301863, 678),
        "total_ms": 1322.4,
        "prediction": 239,
        "status": "ok",
        "error": "",
    }
    return RequestRecord(**{**fields, **changes})


def test_a_job_round_trips_through_its_json(tmp_path):
    original = job()
    path = tmp_path / "job.json"
    original.write(path, indent=1)
    assert DeviceJob.read(path) == original
    data = json.loads(path.read_text())
    assert list(data) == [f.name for f in dataclasses.fields(DeviceJob)]
    assert data["offloaders"][1] == {"name": "jpeg", "params": {"quality": 50}, "label": "jpeg"}
    assert data["arrival"] == {"process": "poisson", "rate_hz": 12.5}
    assert original.hello() == {"plugin": "fashion_cnn", "offloaders": data["offloaders"]}


def test_metadata_and_records_round_trip():
    meta = DeviceMeta(
        rtt_ms=2.5,
        offloaders=({"split": 3},),
        device_offloaders=({"bits": 4},),
        device_kernel_warmup_s=None,
        device_prepare_s=0.1,
        arrival=contract.CLOSED_LOOP,
        device_index=0,
    )
    assert DeviceMeta.from_json(meta.to_json()) == meta
    boxes = ((1.0, 2.0, 3.0, 4.0, 0.9),)
    for made in (record(), record(prediction=boxes), record(choice=None, stream=None)):
        assert RequestRecord.from_json(made.to_json()) == made
    # absent, not null: the device half failed before choosing, the request was never sent
    assert "choice" not in record(choice=None).to_dict()
    assert "stream" not in record(stream=None).to_dict()
    assert record().to_dict()["est_uplink_mbps"] is None  # no estimate yet: null


def without(key: str) -> dict:
    data = job().to_dict()
    del data[key]
    return data


@pytest.mark.parametrize("key", ["plugin", "offloaders", "edge_port", "timeout_s", "records"])
def test_a_job_missing_a_key_names_it(key):
    with pytest.raises(ContractError, match=rf"^job\.json: missing key '{key}'$"):
        DeviceJob.from_json(json.dumps(without(key)), "job.json")


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("timeout_s", "30", r"key 'timeout_s': expected a number, got \"30\""),
        ("edge_port", 5000.0, r"key 'edge_port': expected an integer, got 5000.0"),
        ("threads", True, r"key 'threads': expected an integer, got true"),
        ("samples", [1, "2"], r"key 'samples\[1\]': expected an integer, got \"2\""),
        ("test_data", 3, r"key 'test_data': expected a string or null, got 3"),
        ("offloaders", [{"name": "raw", "params": {}}], r"missing key 'offloaders\[0\]\.label'"),
        (
            "offloaders",
            [{"name": "raw", "params": [], "label": "raw"}],
            r"key 'offloaders\[0\]\.params': expected an object, got \[\]",
        ),
        ("arrival", {"process": "poisson"}, r"key 'arrival': unknown arrival"),
        ("arrival", {"process": "closed", "rate": 1}, r"unknown key 'arrival\.rate'"),
    ],
)
def test_a_job_with_a_wrong_type_names_the_key(key, value, message):
    data = {**job().to_dict(), key: value}
    with pytest.raises(ContractError, match=message) as info:
        DeviceJob.from_json(json.dumps(data), "job.json")
    assert str(info.value).startswith("job.json: ")
    assert isinstance(info.value, errors.TestbedError)  # a clear message, no traceback needed


def test_a_job_with_an_unknown_key_or_no_object_is_refused():
    with pytest.raises(ContractError, match=r"unknown key 'timeout'"):
        DeviceJob.from_dict({**job().to_dict(), "timeout": 3})
    with pytest.raises(ContractError, match=r"job\.json: expected an object, got \[\]"):
        DeviceJob.from_json("[]", "job.json")
    with pytest.raises(ContractError, match=r"job\.json: not JSON"):
        DeviceJob.from_json("{", "job.json")


def test_keys_from_before_open_loop_may_be_absent():
    """A job file from before open loop and several devices: one closed-loop device."""
    data = job().to_dict()
    for key in (
        "test_data",
        "arrival",
        "seed",
        "device_index",
        "devices",
        "barrier",
        "loaded",
        "cgroup",
    ):
        del data[key]
    parsed = DeviceJob.from_dict(data)
    assert parsed.arrival.open_rate_hz is None and parsed.devices == 1
    assert (parsed.seed, parsed.device_index, parsed.barrier, parsed.cgroup) == (1, 0, None, None)


def test_inconsistent_jobs_and_records_are_refused():
    with pytest.raises(ContractError, match="'loaded': needed with 'cgroup'"):
        DeviceJob.from_dict({**without("loaded"), "cgroup": "d0"})
    with pytest.raises(ContractError, match="'status': 'lost' is not one of"):
        RequestRecord.from_dict({**record().to_dict(), "status": "lost"})
    with pytest.raises(ContractError, match="missing key 'total_ms'"):
        RequestRecord.from_dict({k: v for k, v in record().to_dict().items() if k != "total_ms"})
    with pytest.raises(ContractError, match="'total_ms': null exactly when"):
        record(total_ms=None)
    with pytest.raises(ContractError, match="'total_ms': null exactly when"):
        record(status="not_run", error="edge lost")


def test_a_request_not_run_has_no_measurement():
    made = record(status="not_run", error="not run: edge lost", total_ms=None)
    assert RequestRecord.from_json(made.to_json()) == made
    assert made.to_dict()["total_ms"] is None


def test_columns_and_phases_come_from_the_record():
    keys = [f.name for f in dataclasses.fields(RequestRecord)]
    assert tuple(keys) == contract.RECORD_KEYS
    in_order = "queue device encode uplink decode edge downlink"  # pinned: as they happen
    assert tuple(f"{phase}_ms" for phase in in_order.split()) == contract.PHASES
    assert set(contract.PHASES) <= set(keys)
    assert sorted(contract.REQUEST_COLUMNS) == sorted(
        [k for k in keys if k != "stream"]
        + list(contract.COMPARISON_COLUMNS)
        + list(contract.FLAG_COLUMNS)
    )
    assert list(contract.REQUEST_COLUMNS) == results.REQUEST_COLUMNS


def test_committed_requests_csv_keeps_its_columns():
    """Columns may grow at the end, never move or change meaning."""
    header = (RESULTS / "lowbw" / "requests.csv").read_text().splitlines()[0].split(",")
    assert list(contract.REQUEST_COLUMNS[: len(header)]) == header
    assert contract.REQUEST_COLUMNS[len(header) :] == contract.FLAG_COLUMNS


def test_committed_files_read_back_unchanged():
    """Every committed job, metadata and record file parses, and writes back the same."""
    jobs = sorted(RESULTS.rglob("device_job*.json"))
    metas = sorted(RESULTS.rglob("device_meta*.json"))
    records = sorted(RESULTS.rglob("records*.jsonl"))
    assert jobs and metas and records
    for path in jobs:
        data = json.loads(path.read_text())
        written = DeviceJob.read(path).to_dict()
        assert {k: written[k] for k in data} == data, path  # older files lack test_data
    for path in metas:
        assert DeviceMeta.read(path).to_dict() == json.loads(path.read_text()), path
    for path in records[:8]:
        for line in path.read_text().splitlines()[:50]:
            assert RequestRecord.from_json(line, str(path)).to_json() == line, path
