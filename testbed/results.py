"""Per-request records and their per-offloader summary (the results contract).

A request that failed or timed out stays in requests.csv with its status, and
counts as a wrong prediction in `accuracy`, so failures can never raise accuracy.

For a detection plugin (`testbed.predictions`) a request `agrees` when its boxes match
the unmodified model's on the original input one to one (no false positive, no false
negative), `tp`/`fp`/`fn` count its boxes against those (a failed request found
nothing: its reference boxes are all false negatives), `accuracy` is the share of
images that agree, and `precision`/`recall` pool the boxes; both are empty for a
classifier.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from testbed.predictions import Comparison

REQUEST_COLUMNS = [
    "offloader", "request", "sample", "device_ms", "encode_ms", "uplink_ms", "decode_ms",
    "edge_ms", "downlink_ms", "total_ms", "bytes_up", "bytes_down", "prediction", "label",
    "correct", "agrees", "status", "error", "choice", "est_uplink_mbps", "queue_ms",
    "intended_ms", "device", "tp", "fp", "fn",
]  # fmt: skip
SUMMARY_COLUMNS = [
    "offloader", "n", "p50_ms", "p95_ms", "p99_ms", "mean_bytes_up", "accuracy",
    "accuracy_drop_pp", "speedup_vs_raw", "failed", "p50_device_ms", "p50_encode_ms",
    "p50_uplink_ms", "choice", "p50_queue_ms", "precision", "recall",
]  # fmt: skip
# what a choice says about the request's configuration (the rest is prediction)
CHOICE_KEYS = ("split", "bits", "scale", "quality", "mode")


TRAFFIC_COLUMNS = [
    "flow", "kind", "direction", "throughput_mbps", "bytes", "retransmits", "lost_packets",
    "error",
]  # fmt: skip


CAPTURE_COLUMNS = [
    "offloader", "request", "bytes_up", "wire_bytes_up", "bytes_down", "wire_bytes_down",
    "retransmissions",
]  # fmt: skip


def read_records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by an interruption
    return records


def complete_records(
    records: list[dict], reference: dict, compare: Callable[[Any, Any], Comparison] | None = None
) -> list[dict]:
    """Add `correct` and `agrees` (with the unsplit model's prediction on the sample) and,
    for detection, `tp`/`fp`/`fn`: `compare` is the plugin's (`predictions.comparer`;
    None: a classifier's equality)."""
    compare = compare or (lambda prediction, ref: Comparison(agrees=prediction == ref))
    out = []
    for record in records:
        row = {column: record.get(column, "") for column in REQUEST_COLUMNS}
        ok = record.get("status") == "ok"
        prediction, label = record.get("prediction", -1), record.get("label", -1)
        row["correct"] = int(ok and label >= 0 and prediction == label)
        ref = reference.get(record.get("sample"))
        found = compare(prediction if ok else None, ref) if ref is not None else Comparison(False)
        row["agrees"] = int(ok and found.agrees)
        for key in ("tp", "fp", "fn"):
            row[key] = "" if getattr(found, key) is None else getattr(found, key)
        out.append(row)
    return out


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(row.get(k, "")) for k in columns})


def _fmt(value):
    if isinstance(value, list | tuple):  # a detection's boxes
        return json.dumps(value, separators=(",", ":"))
    return f"{value:.4f}" if isinstance(value, float) else value


def summarize(
    rows: list[dict], order: list[str], reference_score: float, metric: str
) -> list[dict]:
    """One row per offloader; `accuracy` is agreement with the unsplit model where the
    plugin's metric is agreement (no labels)."""
    score_key = "correct" if metric == "accuracy" else "agrees"
    summary = []
    for name in order:
        mine = [r for r in rows if r["offloader"] == name]
        ok = [r for r in mine if r["status"] == "ok"]
        totals = np.array([float(r["total_ms"]) for r in ok])
        score = float(np.mean([r[score_key] for r in mine])) if mine else float("nan")
        summary.append(
            {
                "offloader": name,
                "n": len(ok),
                "p50_ms": _pct(totals, 50),
                "p95_ms": _pct(totals, 95),
                "p99_ms": _pct(totals, 99),
                "mean_bytes_up": float(np.mean([r["bytes_up"] for r in ok])) if ok else 0.0,
                "accuracy": score,
                "accuracy_drop_pp": (reference_score - score) * 100,
                "speedup_vs_raw": "",
                "failed": len(mine) - len(ok),
                "p50_device_ms": _pct(_column(ok, "device_ms"), 50),
                "p50_encode_ms": _pct(_column(ok, "encode_ms"), 50),
                "p50_uplink_ms": _pct(_column(ok, "uplink_ms"), 50),
                "choice": _common_choice(ok),
                # open loop: how late the device started requests (0 in closed loop)
                "p50_queue_ms": _pct(_column(ok, "queue_ms"), 50),
                **_pooled(mine),
            }
        )
    raw = next((s for s in summary if s["offloader"] == "raw"), None)
    if raw is not None:
        for row in summary:
            if row["p50_ms"] > 0:
                row["speedup_vs_raw"] = raw["p50_ms"] / row["p50_ms"]
    return summary


def _pooled(rows: list[dict]) -> dict:
    """Precision and recall of the boxes of all requests (failed ones included: they
    found nothing); empty where the requests carry no box counts (a classifier)."""
    counted = [r for r in rows if r.get("tp", "") != ""]
    if not counted:
        return {"precision": "", "recall": ""}
    tp, fp, fn = (sum(int(r[k]) for r in counted) for k in ("tp", "fp", "fn"))
    return {
        "precision": tp / (tp + fp) if tp + fp else 1.0,  # nothing found: nothing wrong
        "recall": tp / (tp + fn) if tp + fn else 1.0,  # nothing to find
    }


def _column(rows: list[dict], key: str) -> np.ndarray:
    return np.array([float(r[key]) for r in rows if r.get(key, "") != ""])


def _common_choice(rows: list[dict]) -> str:
    """The most frequent configuration adaptive offloaders chose, with its share:
    `split=4 bits=3 (28/30)`; empty for offloaders that choose nothing."""
    counts: dict[str, int] = {}
    for row in rows:
        if not row.get("choice"):
            continue
        choice = json.loads(row["choice"])
        text = " ".join(f"{k}={choice[k]}" for k in CHOICE_KEYS if k in choice)
        counts[text] = counts.get(text, 0) + 1
    if not counts:
        return ""
    text, count = max(counts.items(), key=lambda item: item[1])
    return f"{text} ({count}/{len(rows)})" if count < len(rows) else text


def _pct(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def table(summary: list[dict]) -> str:
    """The summary as a Markdown table (also readable in a terminal)."""
    head = ["offloader", "n", "p50 ms", "p95 ms", "p99 ms", "bytes up", "accuracy", "drop pp"]
    head += ["vs raw", "encode ms", "choice"]
    boxes = any(s.get("precision", "") != "" for s in summary)  # a detector's
    if boxes:
        head += ["precision", "recall"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summary:
        speed = f"{s['speedup_vs_raw']:.2f}x" if s["speedup_vs_raw"] != "" else "-"
        cells = [
            s["offloader"], str(s["n"]), f"{s['p50_ms']:.1f}", f"{s['p95_ms']:.1f}",
            f"{s['p99_ms']:.1f}", f"{s['mean_bytes_up']:.0f}", f"{100 * s['accuracy']:.1f}%",
            f"{s['accuracy_drop_pp']:+.2f}", speed, f"{s['p50_encode_ms']:.2f}",
            s["choice"] or "-",
        ]  # fmt: skip
        if boxes:
            cells += [_share(s.get("precision", "")), _share(s.get("recall", ""))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _share(value) -> str:
    return "-" if value == "" else f"{100 * value:.1f}%"
