import csv
import math

import pytest

from testbed import results


def record(offloader, sample, total, prediction, label, status="ok", bytes_up=800):
    return {
        "offloader": offloader,
        "request": sample,
        "sample": sample,
        "total_ms": total,
        "prediction": prediction,
        "label": label,
        "status": status,
        "bytes_up": bytes_up,
    }


def test_summary_counts_failures_as_wrong_and_ranks_latency():
    reference = {0: 1, 1: 2, 2: 3, 3: 4}
    records = [
        record("local", s, 10.0 + s, reference[s], reference[s], bytes_up=0) for s in range(4)
    ]
    records += [
        record("raw", 0, 40.0, 1, 1),
        record("raw", 1, 60.0, 2, 2),
        record("raw", 2, 50.0, 9, 3),
        record("raw", 3, 0.0, -1, 4, status="timeout"),
    ]
    rows = results.complete_records(records, reference)
    assert [r["correct"] for r in rows[4:]] == [1, 1, 0, 0]
    assert [r["agrees"] for r in rows[4:]] == [1, 1, 0, 0]
    summary = {
        s["offloader"]: s for s in results.summarize(rows, ["local", "raw"], 1.0, "accuracy")
    }
    assert summary["raw"]["n"] == 3 and summary["raw"]["failed"] == 1
    assert summary["raw"]["p50_ms"] == 50.0
    assert summary["raw"]["accuracy"] == 0.5
    assert summary["raw"]["accuracy_drop_pp"] == pytest.approx(50.0)
    assert summary["local"]["accuracy_drop_pp"] == 0.0
    assert summary["local"]["speedup_vs_raw"] == pytest.approx(50.0 / 11.5)
    assert summary["raw"]["mean_bytes_up"] == 800.0


def test_agreement_metric_uses_agrees_not_labels():
    reference = {0: 5, 1: 6}
    records = [record("raw", 0, 1.0, 5, -1), record("raw", 1, 1.0, 7, -1)]
    rows = results.complete_records(records, reference)
    (summary,) = results.summarize(rows, ["raw"], 1.0, "agreement")
    assert summary["accuracy"] == 0.5


def test_empty_offloader_has_nan_latency():
    (summary,) = results.summarize([], ["raw"], 1.0, "accuracy")
    assert summary["n"] == 0 and math.isnan(summary["p50_ms"])


def test_write_and_read_back(tmp_path):
    rows = results.complete_records([record("raw", 0, 1.23456789, 1, 1)], {0: 1})
    results.write_csv(tmp_path / "r.csv", rows, results.REQUEST_COLUMNS)
    with open(tmp_path / "r.csv") as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["total_ms"] == "1.2346" and row["correct"] == "1"


def test_read_records_skips_a_line_cut_by_interruption(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_text('{"a": 1}\n{"b": 2}\n{"c": ')
    assert results.read_records(path) == [{"a": 1}, {"b": 2}]
