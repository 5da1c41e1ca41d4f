"""The requests-over-time figure: which offloaders get one, and that it plots their
requests (not only that a PNG appears)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from testbed.results import timeline


def _row(
    offloader,
    sent_ms,
    total_ms,
    choice,
    *,
    status="ok",
    bytes_up=0,
    uplink_ms=0.0,
    est=float("nan"),
):
    return {
        "offloader": offloader,
        "intended_ms": sent_ms,
        "total_ms": total_ms,
        "choice": json.dumps(choice) if isinstance(choice, dict) else choice,
        "status": status,
        "bytes_up": bytes_up,
        "uplink_ms": uplink_ms,
        "est_uplink_mbps": est,
    }


def _trace_rows():
    rows = []
    for i in range(10):  # local, then offloading once the link is fast
        if i < 5:
            rows.append(_row("dd", 1000.0 + 200 * i, 200.0 + i, {"mode": "local"}, est=1.0))
        else:
            choice = {"scale": 1.0, "quality": 100, "probe": i == 5}
            rows.append(
                _row(
                    "dd",
                    1000.0 + 200 * i,
                    90.0 + i,
                    choice,
                    bytes_up=25_000,
                    uplink_ms=50.0,
                    est=5.0,
                )
            )
    rows.append(_row("raw", 0.0, 300.0, "", bytes_up=150_000, uplink_ms=300.0))
    rows.append(_row("dd", 9999.0, 1.0, {"mode": "local"}, status="error"))
    return rows


def test_choice_label_keeps_the_configuration_and_drops_the_prediction():
    assert timeline.choice_label(json.dumps({"mode": "local", "predicted_ms": 3})) == "local"
    label = timeline.choice_label(json.dumps({"quality": 75, "scale": 0.5, "est_mbps": 2}))
    assert label == "scale=0.5 quality=75"
    assert timeline.choice_label(json.dumps({"split": 3, "bits": 6})) == "split=3 bits=6"
    assert timeline.choice_label("") == ""
    assert timeline.choice_label("split=2") == "split=2"  # not JSON: kept as it is


def test_only_offloaders_whose_choice_changes_get_a_timeline():
    rows = _trace_rows()
    assert timeline.changing_offloaders(rows) == ["dd"]
    fixed = [r for r in rows if r["offloader"] == "raw"]
    assert timeline.changing_offloaders(fixed) == []


def test_series_is_in_send_order_from_the_first_send_with_upload_rates():
    rows = _trace_rows()
    data = timeline.series(list(reversed(rows)), "dd")
    assert data["t_s"].tolist() == pytest.approx([0.2 * i for i in range(10)])
    assert data["label"][:5] == ["local"] * 5
    assert data["label"][5:] == ["scale=1.0 quality=100"] * 5
    assert data["probe"].tolist() == [False] * 5 + [True] + [False] * 4
    # 25,000 bytes in 50 ms: 4 Mbit/s; local requests uploaded nothing
    assert np.isnan(data["rate_mbps"][:5]).all()
    assert data["rate_mbps"][5:] == pytest.approx([4.0] * 5)
    assert len(data["total_ms"]) == 10  # the failed request is not plotted


def test_the_figure_holds_every_request_under_its_choice():
    rows = _trace_rows()
    fig = timeline.timeline_figure(rows, ["dd"])
    top, bottom = fig.axes[0], fig.axes[1]
    points = {
        c.get_label(): c.get_offsets().data.tolist() for c in top.collections
    }  # label -> [[t, ms], ...]
    assert [p[1] for p in points["local"]] == pytest.approx([200.0 + i for i in range(5)])
    assert [p[1] for p in points["scale=1.0 quality=100 (probe)"]] == pytest.approx([95.0])
    assert [p[1] for p in points["scale=1.0 quality=100"]] == pytest.approx(
        [90.0 + i for i in range(6, 10)]
    )
    estimate = bottom.lines[0].get_ydata()
    assert list(estimate) == pytest.approx([1.0] * 5 + [5.0] * 5)
    rates = bottom.collections[0].get_offsets()
    assert np.asarray(rates)[5:, 1] == pytest.approx([4.0] * 5)
