"""What a prediction is per plugin task (testbed.models.predictions): the wire codec, records,
the comparison with the reference, check_plugin for a detector, offloaders that refuse
a detector, and a malformed RESULT reply on the device (an error record, not a crash)."""

from __future__ import annotations

import io
import json
import math
import struct
import time

import numpy as np
import pytest
import torch
from torch import nn

from testbed import offloaders
from testbed.agents.contract import PHASES
from testbed.agents.device import InFlight, RecordWriter, Requests
from testbed.agents.protocol import RESULT_STRUCT, TIMING_STRUCT, Frame, MessageType
from testbed.errors import PluginError
from testbed.models import plugins, predictions
from testbed.models.plugin_api import Dataset, InputSpec, Plugin, check_plugin
from testbed.offloaders.link_estimate import LinkEstimate
from testbed.results import records as results

BOXES = [[10.0, 20.0, 50.0, 70.0, 0.99], [100.5, 80.25, 140.0, 130.0, 0.875]]


def iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


class Boxes(nn.Module):
    """A stand-in detector: always BOXES, padded to `rows` rows."""

    def __init__(self, rows: int = 4):
        super().__init__()
        self.rows = rows

    def forward(self, x):
        out = torch.zeros(len(x), self.rows, 5)
        out[:, : len(BOXES)] = torch.tensor(BOXES)
        return out


class Detector(Plugin):
    def __init__(self, rows: int = 4, **kw):
        defaults = dict(
            name="detector",
            description="test",
            num_classes=0,
            split_points=(),
            input_spec=InputSpec((3, 8, 8), "uint8", 0, 255),
            metric="detection_agreement",
            task="detection",
        )
        super().__init__(**{**defaults, **kw})
        self.output_shape = (rows, 5)
        self.rows = rows

    def build_stages(self):
        return [Boxes(self.rows)]

    def test_data(self) -> Dataset:
        return Dataset(np.zeros((2, 3, 8, 8), np.uint8), np.full(2, -1))

    train_data = test_data

    @staticmethod
    def predict(output):
        return [[row.tolist() for row in image if row[4] > 0] for image in output]

    @staticmethod
    def counts(pred, ref):
        """Greedy one-to-one at IoU >= 0.5 (enough for these tests)."""
        used, tp = set(), 0
        for p in pred:
            for j, r in enumerate(ref):
                if j not in used and iou(p, r) >= 0.5:
                    used.add(j)
                    tp += 1
                    break
        return tp, len(pred) - tp, len(ref) - tp


@pytest.fixture
def detector():
    return Detector()


# --- classification: as before tasks existed -------------------------------------------


def test_classification_is_the_default_and_its_wire_form_is_the_old_int32():
    assert predictions.task_name(None) == "classification"
    assert predictions.task_name(plugins.get("fashion_cnn")) == "classification"
    assert predictions.encode(None, 7) == struct.pack("!i", 7)
    timing = TIMING_STRUCT.pack(1, 2.0, 3.0, 4)
    # the whole RESULT payload of a classifier is byte-identical to the old RESULT_STRUCT
    assert timing + predictions.encode(None, -3) == RESULT_STRUCT.pack(1, 2.0, 3.0, 4, -3)
    assert predictions.decode(None, struct.pack("!i", 7)) == 7
    with pytest.raises(ValueError, match="classification result of 5 bytes, expected 4"):
        predictions.decode(None, b"\0" * 5)


def test_classification_predicts_top1_per_batch_item_and_compares_by_equality():
    logits = torch.tensor([[0.1, 2.0, 0.3], [5.0, 1.0, 0.0]])
    assert predictions.predict(None, logits) == [1, 0]
    assert predictions.compare(None, 1, 1).agrees
    assert not predictions.compare(None, 2, 1).agrees
    assert not predictions.compare(None, None, 1).agrees  # a failed request
    assert predictions.compare(None, 1, 1).tp is None


def test_unknown_task_is_named(detector):
    detector.task = "segmentation"
    with pytest.raises(PluginError, match="task 'segmentation'; allowed: classification"):
        predictions.encode(detector, [])


# --- detection on the wire ---------------------------------------------------------------


def test_detection_round_trip(detector):
    data = predictions.encode(detector, BOXES)
    assert len(data) == 2 + 2 * 5 * 4 and data[:2] == b"\0\2"
    back = predictions.decode(detector, data)
    assert np.allclose(back, BOXES, atol=1e-4)  # float32 on the wire
    assert predictions.to_record(detector, back) == BOXES
    assert predictions.decode(detector, predictions.encode(detector, [])) == []


def test_records_round_coordinates_and_scores(detector):
    row = [[1.23456, 2.0, 3.0049, 4.5, 0.123456]]
    assert predictions.to_record(detector, row) == [[1.23, 2.0, 3.0, 4.5, 0.1235]]
    assert json.loads(json.dumps(predictions.to_record(detector, row)))  # JSON-ready


def body(count: int, values) -> bytes:
    return struct.pack("!H", count) + np.asarray(values, ">f4").tobytes()


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "0 bytes has no box count"),
        (b"\1", "1 bytes has no box count"),
        (body(5, np.zeros(25)), "claims 5 boxes, at most 4"),
        (body(65535, []), "claims 65535 boxes, at most 4"),
        (body(2, np.zeros(9)), "38 bytes for 2 boxes, expected 42"),
        (body(1, np.zeros(6)), "26 bytes for 1 boxes, expected 22"),
        (body(1, [0, 0, 1, 1, math.nan]), "non-finite"),
        (body(1, [0, 0, math.inf, 1, 1]), "non-finite"),
    ],
)
def test_malformed_detection_results_are_refused(detector, data, message):
    with pytest.raises(ValueError, match="detection result") as info:
        predictions.decode(detector, data)
    assert message in str(info.value)


def test_the_edge_refuses_to_send_what_the_device_would_refuse(detector):
    with pytest.raises(ValueError, match="5 detections, at most 4"):
        predictions.encode(detector, BOXES * 2 + [BOXES[0]])
    with pytest.raises(ValueError, match="non-finite"):
        predictions.encode(detector, [[0, 0, 1, math.nan, 1]])
    with pytest.raises(ValueError, match="rows of 5 values"):
        predictions.encode(detector, [[0, 0, 1, 1]])


# --- detection: comparison, results ------------------------------------------------------


def test_detection_compares_boxes_with_the_plugins_counts(detector):
    moved = [[12.0, 22.0, 52.0, 72.0, 0.9]]  # IoU 0.82 with BOXES[0]
    found = predictions.compare(detector, moved, BOXES)
    assert (found.agrees, found.tp, found.fp, found.fn) == (False, 1, 0, 1)
    found = predictions.compare(detector, BOXES, BOXES)
    assert (found.agrees, found.tp, found.fp, found.fn) == (True, 2, 0, 0)
    found = predictions.compare(detector, BOXES, [])
    assert (found.agrees, found.tp, found.fp, found.fn) == (False, 0, 2, 0)
    assert predictions.compare(detector, [], []).agrees  # nothing to find, nothing found
    failed = predictions.compare(detector, None, [])
    assert not failed.agrees and (failed.tp, failed.fp, failed.fn) == (0, 0, 0)


def detection_record(offloader, sample, prediction, status="ok"):
    return {
        "offloader": offloader,
        "request": sample,
        "sample": sample,
        "total_ms": 10.0,
        "prediction": prediction,
        "label": -1,
        "status": status,
        "bytes_up": 100,
    }


def test_results_score_detection_by_image_agreement_and_pool_precision_recall(detector):
    reference = {0: BOXES, 1: [], 2: BOXES[:1]}
    records = [detection_record("raw", s, reference[s]) for s in range(3)]
    records += [
        detection_record("jpeg", 0, BOXES[:1]),  # 1 TP, 1 FN
        detection_record("jpeg", 1, [[0, 0, 5, 5, 0.8]]),  # 1 FP
        detection_record("jpeg", 2, -1, status="error"),  # failed: its box is a FN
    ]
    rows = results.complete_records(records, reference, predictions.comparer(detector))
    assert [r["agrees"] for r in rows] == [1, 1, 1, 0, 0, 0]
    assert [(r["tp"], r["fp"], r["fn"]) for r in rows[3:]] == [(1, 0, 1), (0, 1, 0), (0, 0, 1)]
    summary = {
        s["offloader"]: s
        for s in results.summarize(rows, ["raw", "jpeg"], 1.0, "detection_agreement")
    }
    assert summary["raw"]["accuracy"] == 1.0 and summary["raw"]["precision"] == 1.0
    assert summary["raw"]["recall"] == 1.0
    jpeg = summary["jpeg"]
    assert jpeg["accuracy"] == 0.0 and jpeg["accuracy_drop_pp"] == pytest.approx(100.0)
    assert jpeg["precision"] == pytest.approx(1 / 2)  # 1 TP, 1 FP
    assert jpeg["recall"] == pytest.approx(1 / 3)  # 1 TP, 2 FN (one from the failure)
    assert jpeg["failed"] == 1 and jpeg["n"] == 2
    table = results.table(list(summary.values()))
    assert "| precision | recall |" in table and "| 50.0% | 33.3% |" in table
    assert "precision" in results.SUMMARY_COLUMNS and "recall" in results.SUMMARY_COLUMNS


def test_classification_leaves_box_columns_empty(tmp_path):
    records = [detection_record("raw", 0, 3), detection_record("raw", 1, 4)]
    rows = results.complete_records(records, {0: 3, 1: 5})
    assert [r["agrees"] for r in rows] == [1, 0] and rows[0]["tp"] == ""
    (summary,) = results.summarize(rows, ["raw"], 1.0, "agreement")
    assert summary["precision"] == "" and summary["recall"] == ""
    assert "precision" not in results.table([summary])


def test_detection_predictions_are_written_as_json(tmp_path, detector):
    rows = results.complete_records(
        [detection_record("raw", 0, BOXES)], {0: BOXES}, predictions.comparer(detector)
    )
    results.write_csv(tmp_path / "r.csv", rows, results.REQUEST_COLUMNS)
    import csv

    with open(tmp_path / "r.csv") as handle:
        (row,) = list(csv.DictReader(handle))
    assert json.loads(row["prediction"]) == BOXES and row["tp"] == "2"


# --- check_plugin and offloaders ---------------------------------------------------------


def test_check_plugin_accepts_a_detector_and_checks_its_output_shape(detector):
    assert check_plugin(detector) == [(4, 5)]
    detector.output_shape = (8, 5)
    with pytest.raises(PluginError, match=r"gives \(4, 5\); a detection plugin declares"):
        check_plugin(detector)


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"metric": "accuracy"},
            "metric 'accuracy'; allowed for a detection plugin: detection_agreement",
        ),
        ({"split_points": (1,)}, "split_points (1,) must be"),
    ],
)
def test_check_plugin_refuses_a_detectors_bad_declarations(change, message):
    with pytest.raises(PluginError, match="detector") as info:
        check_plugin(Detector(**change))
    assert message in str(info.value)


def test_check_plugin_refuses_a_detector_without_counts():
    class NoCounts(Detector):
        counts = None

    with pytest.raises(PluginError, match=r"must define counts\(\)"):
        check_plugin(NoCounts())


def test_mtcnn_faces_is_registered_and_passes_check_plugin():
    assert "mtcnn_faces" in plugins.available()
    plugin = plugins.get("mtcnn_faces")
    assert predictions.task_name(plugin) == "detection"
    assert check_plugin(plugin) == [(64, 5)]  # random weights: no facenet-pytorch needed


@pytest.mark.parametrize(
    "name", ["neurosurgeon", "jalad", "bottlenet", "feature_png", "feature_jpeg"]
)
def test_offloaders_that_need_splits_or_training_refuse_a_detector(name):
    plugin = plugins.get("mtcnn_faces")
    with pytest.raises(PluginError) as info:
        offloaders.get(name)(plugin, None)
    text = str(info.value)
    assert f"offloader {name!r} works with classification plugins only" in text
    fit = "local, raw, deepcod, jpeg, webp, deepdecision"
    assert f"'mtcnn_faces' is a detection plugin: use {fit}" in text


@pytest.mark.parametrize("name", ["local", "raw", "jpeg", "webp", "deepdecision"])
def test_whole_model_offloaders_accept_a_detector(name, detector):
    params = {"quality": 50} if name in ("jpeg", "webp") else {}
    detector.input_spec = InputSpec((3, 48, 64), "uint8", 0, 255)
    offloaders.get(name)(detector, nn.Sequential(Boxes()), **params)


def test_local_and_raw_halves_give_box_lists(detector):
    model = nn.Sequential(Boxes()).eval()
    sample = np.zeros((3, 8, 8), np.uint8)
    timer = offloaders.PhaseTimer()
    local = offloaders.get("local")(detector, model).device(sample, timer)
    raw = offloaders.get("raw")(detector, model)
    assert predictions.to_record(detector, local.prediction) == BOXES
    edge = raw.edge(raw.device(sample, timer).payload, timer)
    assert predictions.to_record(detector, edge) == BOXES


# --- the device agent: a bad RESULT is an error record -----------------------------------


class FakeConnection:
    local_port = 1
    sent = received = 0

    def close(self):
        pass


def reply_record(plugin, payload: bytes) -> dict:
    out = io.StringIO()
    writer = RecordWriter(out)
    requests = Requests("127.0.0.1", 1, {}, 5.0, writer, LinkEstimate(), plugin)
    conn = FakeConnection()
    record = {
        "offloader": "raw",
        "device": 0,
        "request": 3,
        "sample": 0,
        "label": 0,
        "intended_ms": 0.0,
        **dict.fromkeys(PHASES, 0.0),
        "bytes_up": 0,
        "bytes_down": 0,
        "est_uplink_mbps": None,
        "choice": "",
        "stream": [1, 0, 0],
    }
    now = time.monotonic_ns()
    requests.inflight[3] = InFlight(3, record, now, conn, 100, True, now, now + 10**10)
    writer.expect(3)
    requests._reply(conn, Frame(MessageType.RESULT, 0, 3, payload, now + 1000), 0)
    return json.loads(out.getvalue())


def test_a_detection_result_is_recorded_as_boxes(detector):
    payload = TIMING_STRUCT.pack(1, 0.5, 1.5, 2) + predictions.encode(detector, BOXES)
    record = reply_record(detector, payload)
    assert record["status"] == "ok" and record["prediction"] == BOXES
    assert record["edge_ms"] == 1.5


@pytest.mark.parametrize(
    "payload, message",
    [
        (TIMING_STRUCT.pack(1, 0.5, 1.5, 2) + body(9, np.zeros(45)), "claims 9 boxes"),
        (TIMING_STRUCT.pack(1, 0.5, 1.5, 2) + body(1, [0, 0, 1, 1, math.nan]), "non-finite"),
        (b"\0" * 10, "shorter than its 32-byte timings"),
    ],
)
def test_a_malformed_result_is_an_error_record_not_a_crash(detector, payload, message):
    record = reply_record(detector, payload)
    assert record["status"] == "error" and record["prediction"] == -1
    assert record["error"].startswith("bad RESULT: ") and message in record["error"]


def test_a_classifier_result_too_long_is_an_error_record():
    record = reply_record(None, RESULT_STRUCT.pack(1, 0.5, 1.5, 2, 7) + b"\0")
    assert record["status"] == "error" and "classification result of 5 bytes" in record["error"]
    assert reply_record(None, RESULT_STRUCT.pack(1, 0.5, 1.5, 2, 7))["prediction"] == 7
