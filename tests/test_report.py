"""The results report: bootstrap statistics, what the plots draw, report.md's numbers.

Run and sweep folders are synthetic, written with the results module's own writers and
column lists, with latencies drawn from known distributions.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from testbed.results import compare, figures, load, markdown, paired, report, stats, summary_md
from testbed.results import records as results
from testbed.results.formatting import estimate_text, ms

ROOT = Path(__file__).resolve().parent.parent
# share of total_ms per phase; the remaining 5% is unattributed
SHARES = {"device_ms": 0.2, "encode_ms": 0.05, "uplink_ms": 0.4, "decode_ms": 0.05}
SHARES |= {"edge_ms": 0.1, "downlink_ms": 0.15}


def write_run(
    folder: Path,
    spec: dict[str, dict],
    *,
    seed: int = 0,
    extra_columns: tuple[str, ...] = (),
    name: str = "synthetic",
    scenario_extra: dict | None = None,
) -> dict[str, np.ndarray]:
    """A run folder; spec: offloader -> {median, n, bytes, wrong, failed, queue, devices}.
    Returns each offloader's completed latencies. `scenario_extra`: more keys of the
    resolved scenario (max_drop_pp, offloaders)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    records, totals = [], {}
    request = 0
    for offloader, s in spec.items():
        n = s.get("n", 40)
        total = s["median"] * rng.lognormal(0.0, 0.2, n)
        # as requests.csv holds them (4 decimals)
        totals[offloader] = np.array([float(f"{t:.4f}") for t in total[s.get("failed", 0) :]])
        for i, t in enumerate(total):
            failed = i < s.get("failed", 0)
            wrong = i < s.get("wrong", 0)
            record = {
                "offloader": offloader,
                "request": request,
                "sample": i,
                "total_ms": 0.0 if failed else float(t),
                "bytes_up": s.get("bytes", 1000),
                "bytes_down": 40,
                "prediction": (i + 1) % 10 if wrong else i % 10,
                "label": i % 10,
                "status": "timeout" if failed else "ok",
            }
            for phase, share in SHARES.items():
                record[phase] = 0.0 if failed else float(t) * share
            if "queue_ms" in extra_columns:
                record["queue_ms"] = 0.0 if failed else float(t) * 0.02
            if "device" in extra_columns:
                record["device"] = i % s.get("devices", 1)
            records.append(record)
            request += 1
    rows = results.complete_records(records, {i: i % 10 for i in range(1000)})
    for row, record in zip(rows, records, strict=True):
        row.update({k: record[k] for k in extra_columns})
    columns = results.REQUEST_COLUMNS + [
        c for c in extra_columns if c not in results.REQUEST_COLUMNS
    ]
    results.write_csv(folder / "requests.csv", rows, columns)
    bound = (scenario_extra or {}).get("max_drop_pp", 1.0)
    summary = results.summarize(rows, list(spec), 1.0, "accuracy", bound)
    results.write_csv(folder / "summary.csv", summary, results.SUMMARY_COLUMNS)
    scenario = {"name": name, "model": "fashion_cnn", "samples": 40, "seed": seed}
    scenario |= scenario_extra or {}
    (folder / "resolved_scenario.yaml").write_text(yaml.safe_dump(scenario))
    environment = {"kernel": "6.1-test", "link_backend": "htb+test", "commit": "c0ffee" * 7}
    (folder / "environment.json").write_text(json.dumps(environment))
    return totals


BASE = {
    "local": {"median": 500.0, "bytes": 0},
    "raw": {"median": 2000.0, "bytes": 100_000},
    "deepcod": {"median": 250.0, "bytes": 2000, "wrong": 1},
}


def test_bootstrap_interval_covers_the_true_median_most_of_the_time():
    rng = np.random.default_rng(7)
    hits = 0
    for trial in range(200):
        sample = rng.lognormal(0.0, 1.0, 150)  # true median exp(0) = 1
        hits += stats.median_ci(sample, resamples=400, seed=trial).contains(1.0)
    assert 0.88 <= hits / 200 <= 0.995


def test_bootstrap_interval_narrows_with_more_data_and_is_seeded():
    rng = np.random.default_rng(1)
    small = stats.median_ci(rng.normal(10, 2, 40))
    large = stats.median_ci(rng.normal(10, 2, 4000))
    assert large.high - large.low < (small.high - small.low) / 4
    assert large.contains(10.0)
    values = rng.normal(0, 1, 300)
    assert stats.median_ci(values) == stats.median_ci(values)
    assert stats.median_ci(values, seed=1) != stats.median_ci(values, seed=2)


def test_ratio_of_medians():
    rng = np.random.default_rng(2)
    fast = rng.lognormal(np.log(100), 0.3, 500)
    slow = rng.lognormal(np.log(400), 0.3, 500)
    ratio = stats.ratio_of_medians_ci(slow, fast)
    assert ratio.value == pytest.approx(np.median(slow) / np.median(fast))
    assert ratio.contains(4.0) and ratio.low > 3 and ratio.high < 5.5
    exact = stats.ratio_of_medians_ci(np.arange(1, 102) * 3.0, np.arange(1, 102))
    assert exact.value == pytest.approx(3.0)
    assert np.isnan(stats.ratio_of_medians_ci([], [1.0]).value)
    assert np.isnan(stats.median_ci([np.nan]).value)
    assert stats.median_ci([5.0]) == stats.Estimate(5.0, 5.0, 5.0)


def assert_png(path: Path) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width > 300 and image.height > 200
        pixels = np.asarray(image.convert("L"), dtype=float)
    assert pixels.std() > 5  # drawn, not blank


def test_run_report_numbers_and_failed_offloaders(tmp_path):
    spec = {**BASE, "jpeg": {"median": 300.0, "failed": 40}, "ghost": {"median": 1.0, "n": 0}}
    totals = write_run(tmp_path, spec)
    path = report.write_report(tmp_path)
    text = path.read_text()
    study = load.load_study(tmp_path)
    (group,) = study.groups
    deepcod = group.offloaders["deepcod"]
    assert deepcod.median.value == pytest.approx(np.median(totals["deepcod"]), rel=1e-6)
    assert deepcod.mean == pytest.approx(np.mean(totals["deepcod"]), rel=1e-6)
    assert deepcod.drop_pp == pytest.approx(100 / 40)  # one wrong in 40
    assert deepcod.score_ci == stats.wilson(39, 40)
    line = next(row for row in text.splitlines() if row.startswith("| deepcod |"))
    assert f"| 40 | {estimate_text(deepcod.median)} | {ms(deepcod.mean)} |" in line
    # accuracy with its interval, agreement beside it, the drop, over the 1-point bound
    ci = stats.wilson(39, 40)
    score = f"| 97.5 [{100 * ci.low:.1f}, {100 * ci.high:.1f}] | 97.5 |"
    assert f"{score} +2.50 [-6.5, 12.9] | no | 0 |" in line
    assert "| accuracy % [95% CI] | agreement % | drop pp [95% CI] | within bound |" in text
    jpeg = next(row for row in text.splitlines() if row.startswith("| jpeg |"))
    assert jpeg.startswith("| jpeg | 0 | - | - | - | - |")
    assert jpeg.endswith("| NO: over beyond its CI | 40 |")
    assert "| ghost | 0 | - |" in text
    assert "- Accuracy bound: `max_drop_pp` = 1 (points of drop; the default" in text
    assert "No latency-against-axis plot" in text
    assert "queue_ms" not in study.phases  # closed loop: no queue segment
    for name in ("latency_cdf", "phases", "bytes", "drop_vs_latency"):
        assert f"](plots/{name}.png)" in text
        assert_png(tmp_path / "plots" / f"{name}.png")
    first = path.read_bytes()
    assert report.write_report(tmp_path).read_bytes() == first  # deterministic


def test_a_faster_offloader_with_a_larger_drop_gets_no_speedup_claim(tmp_path):
    """DeepCOD is 8x faster than raw but loses 2.5 points where raw loses none: no
    speedup figure, no win, and no 'best'/'fastest' wording for it."""
    write_run(tmp_path, BASE)
    text = report.write_report(tmp_path).read_text()
    study = load.load_study(tmp_path)
    (row,) = compare.comparisons(study, "deepcod")
    for name in ("raw", "local"):
        assert not row[name].claimed and np.isnan(row[name].ratio.value)
        verdict = f"{name} loses less accuracy (drop 0.00 vs 2.50 points): no speedup claimed"
        assert row[name].verdict() == verdict
        assert f"| all requests | {name} | 0.00 vs 2.50 | - | {verdict} |" in text
    assert "No baseline loses at least as much accuracy as deepcod: no speedup is claimed." in text
    section = text.split("## DeepCOD at matched accuracy")[1].split("## Plots")[0]
    assert "x [" not in section  # no ratio anywhere
    assert "best" not in text.lower() and "fastest" not in text.split("## Plots")[0].lower()
    # the single run's bound line names who is within it
    assert "- Within the bound (1 points): local, raw" in text
    assert "- Over it (drop in points): deepcod (2.50, 95% CI [" in text


def test_a_baseline_losing_no_less_gets_a_paired_speedup(tmp_path):
    """jpeg loses as much as DeepCOD (2.5 points): the speedup is stated, paired by
    sample, with an interval; raw loses less: no claim."""
    spec = {**BASE, "jpeg": {"median": 1000.0, "wrong": 1}}
    totals = write_run(tmp_path, spec)
    study = load.load_study(tmp_path)
    (row,) = compare.comparisons(study, "deepcod")
    jpeg = row["jpeg"]
    assert jpeg.claimed and jpeg.pairs == 40
    expected = stats.paired_ratio_of_medians_ci(totals["jpeg"], totals["deepcod"])
    assert jpeg.ratio == expected and jpeg.ratio.value == pytest.approx(
        np.median(totals["jpeg"]) / np.median(totals["deepcod"])
    )
    assert 3 < jpeg.ratio.low < jpeg.ratio.value < jpeg.ratio.high < 5
    assert jpeg.verdict() == "deepcod faster at no larger drop"
    text = report.write_report(tmp_path).read_text()
    assert f"| all requests | jpeg | 2.50 vs 2.50 | {jpeg.ratio_text()} | deepcod faster" in text
    assert "(paired, 40 pairs)" in jpeg.ratio_text()
    assert not row["raw"].claimed and "No baseline loses" not in text


def test_a_run_where_nothing_completed_still_reports(tmp_path):
    write_run(
        tmp_path, {"raw": {"median": 100.0, "failed": 40}, "deepcod": {"median": 1.0, "n": 0}}
    )
    text = report.write_report(tmp_path).read_text()
    assert (
        "| raw | 0 | - | - | - | - | - | 0.0 [0.0, 8.8] | 0.0 | +100.00 [87.6, 100.0] "
        "| NO: over beyond its CI | 40 |" in text
    )
    assert "| deepcod | 0 | - | - | - | - | - | - | - | - | - | 0 |" in text
    # no speedup without latencies or accuracy
    assert "| all requests | raw | 100.00 vs - | - | raw: no accuracy to compare" in text
    assert "No request completed: nothing to plot." in text
    # figures of such a study draw nothing but do not fail either
    study = load.load_study(tmp_path)
    assert not figures.drop_figure(study).axes[0].collections
    assert not figures.cdf_figure(study)[0].axes[0].lines


def write_sweep(folder: Path, *, missing: bool = True) -> dict:
    """Bandwidth x devices, two repeats; latency falls with bandwidth, grows with devices;
    DeepCOD's bytes differ with bandwidth."""
    axes = {"network.uplink.bandwidth_mbps": [0.25, 1, 4], "devices": [1, 2]}
    cells, pooled = [], {}
    index = 0
    for bw in axes["network.uplink.bandwidth_mbps"]:
        for devices in axes["devices"]:
            for repeat in range(2):
                values = {"network.uplink.bandwidth_mbps": bw, "devices": devices}
                cell_id = f"c{index:03d}"
                status = "failed" if missing and (bw, devices, repeat) == (4, 2, 1) else "done"
                rel = f"cells/{cell_id}-bw{bw}-d{devices}-r{repeat}"
                cells.append(
                    {
                        "id": cell_id,
                        "dir": rel,
                        "values": values,
                        "repeat": repeat,
                        "seed": index,
                        "status": status,
                    }
                )
                index += 1
                if status != "done":
                    continue
                spec = {
                    "local": {"median": 500.0 * devices, "bytes": 0},
                    # raw loses as much as DeepCOD here: a speedup over it may be stated
                    "raw": {"median": 2000.0 / bw, "bytes": 100_000, "wrong": 2},
                    "deepcod": {
                        "median": 200.0 / bw + 20 * devices,
                        "bytes": int(800 / bw),
                        "wrong": 2,
                    },
                }
                got = write_run(folder / rel, spec, seed=index, name="paper")
                for name, values_ in got.items():
                    pooled.setdefault((bw, devices, name), []).extend(values_)
    sweep = {
        "name": "paper",
        "source": "/abs/scenarios/paper.yaml",
        "repeats": 2,
        "axes": axes,
        "cells": cells,
    }
    (folder / "sweep.json").write_text(json.dumps(sweep))
    return {k: np.array(v) for k, v in pooled.items()}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A sweep folder with its report written (rendering is the slow part: once)."""
    folder = tmp_path_factory.mktemp("sweep")
    pooled = write_sweep(folder)
    text = report.write_report(folder, title="Paper sweep").read_text()
    return folder, pooled, text


def test_sweep_figures_draw_the_pooled_statistics(sweep):
    folder, pooled, _ = sweep
    study = load.load_study(folder)
    assert len(study.groups) == 6 and study.done == 11 and len(study.missing) == 1
    bw = "network.uplink.bandwidth_mbps"
    assert figures.numeric_axes(study) == [bw, "devices"]

    fig = figures.latency_figure(study, bw)
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.lines]
    assert [ax.get_title() for ax in panels] == ["devices=1", "devices=2"]
    for ax, devices in zip(panels, (1, 2), strict=True):
        assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
        for line in ax.lines:
            name = line.get_label()
            assert list(line.get_xdata()) == [0.25, 1, 4]
            expected = [np.median(pooled[(b, devices, name)]) for b in (0.25, 1, 4)]
            assert np.allclose(line.get_ydata(), expected)
            (band,) = [c for c in ax.collections if c.get_gid() == f"band:{name}"]
            ys = band.get_paths()[0].vertices[:, 1]
            assert all(ys.min() <= e <= ys.max() for e in expected)
            assert len(np.unique(ys)) > 2  # a band, not a line
    cdf, shown = figures.cdf_figure(study)
    assert shown == list(range(6))
    for ax, group in zip([a for a in cdf.axes if a.lines], study.groups, strict=True):
        for line in ax.lines:
            key = (group.values[bw], group.values["devices"], line.get_label())
            assert line.get_ydata()[-1] == 1.0 and line.get_ydata()[0] == 0.0
            assert np.allclose(line.get_xdata()[1:], np.sort(pooled[key]))

    phases, _ = figures.phase_figure(study)
    ax = phases.axes[0]
    group = study.groups[0]
    names = [t.get_text() for t in ax.get_xticklabels()]
    assert names == ["local", "raw", "deepcod"]
    stacks = np.zeros(3)
    for container in ax.containers:
        heights = np.array([bar.get_height() for bar in container])
        key = {v: k for k, v in figures.PHASE_NAMES.items()}[container.get_label()]
        for name, height in zip(names, heights, strict=True):
            data = pooled[(0.25, 1, name)]
            share = SHARES.get(key, 0.05)
            assert height == pytest.approx(np.mean(data) * share, rel=1e-3, abs=1e-3)
        stacks += heights
    means = [np.mean(group.offloaders[n].totals) for n in names]
    assert np.allclose(stacks, means, rtol=1e-4)

    bytes_fig, profiles = figures.bytes_figure(study)
    assert profiles == 3  # deepcod's bytes change with bandwidth, not with devices
    bars = bytes_fig.axes[0].containers
    assert [bar.get_height() for bar in bars[0]] == pytest.approx([0, 100_000, 3200])
    assert bytes_fig.axes[0].get_yscale() == "log"

    drop = figures.drop_figure(study)
    (points,) = [c for c in drop.axes[0].collections if c.get_label() == "deepcod"]
    medians = [
        np.median(pooled[(g.values[bw], g.values["devices"], "deepcod")]) for g in study.groups
    ]
    assert np.allclose(points.get_offsets()[:, 0], medians)
    assert np.allclose(points.get_offsets()[:, 1], 5.0)  # 2 wrong in 40

    devices = figures.devices_figure(study, figures.devices_axis(study))
    edge = [ln for ax in devices.axes for ln in ax.lines if ln.get_gid() == "edge:local"]
    assert len(edge) == 3  # one row per bandwidth
    local = pooled[(1, 1, "local")], pooled[(1, 2, "local")]
    assert np.allclose(edge[1].get_ydata(), [np.median(v * 0.15) for v in local], rtol=1e-3)


def test_sweep_report_lists_groups_missing_cells_and_speedups(sweep):
    folder, pooled, text = sweep
    assert text.startswith("# Paper sweep\n")
    assert "- Cells: 11 done, 1 missing" in text
    assert "| c011 | bandwidth_mbps=4, devices=2 | 1 | failed |" in text
    assert "### bandwidth_mbps=4, devices=2 (1 cell)" in text
    assert "### bandwidth_mbps=0.25, devices=1 (2 cells)" in text
    study = load.load_study(folder)
    group = study.groups[0]
    median = stats.median_ci(pooled[(0.25, 1, "raw")])
    assert group.offloaders["raw"].median == median
    assert f"| raw | 80 | {estimate_text(median)} |" in text
    rows = compare.comparisons(study, "deepcod")
    raw = rows[0]["raw"]  # paired within each repeat's cell, pooled over the two
    assert raw.claimed and raw.pairs == 80
    assert raw.ratio.value == pytest.approx(
        np.median(pooled[(0.25, 1, "raw")]) / np.median(pooled[(0.25, 1, "deepcod")])
    )
    assert raw.ratio.low > 1
    assert f"| bandwidth_mbps=0.25, devices=1 | raw | 5.00 vs 5.00 | {raw.ratio_text()} |" in text
    local = rows[0]["local"]  # faster than raw, and loses nothing: no claim over it
    verdict = "local loses less accuracy (drop 0.00 vs 5.00 points): no speedup claimed"
    assert not local.claimed and local.verdict() == verdict
    assert f"| bandwidth_mbps=0.25, devices=1 | local | 0.00 vs 5.00 | - | {verdict} |" in text
    assert "best baseline" not in text.lower()
    for name in (
        "latency_vs_network_uplink_bandwidth_mbps",
        "latency_vs_devices",
        "devices_devices",
    ):
        assert f"](plots/{name}.png)" in text
        assert_png(folder / "plots" / f"{name}.png")


def test_queue_and_device_columns_are_used(tmp_path):
    write_run(
        tmp_path,
        {"deepcod": {"median": 100.0, "devices": 3}, "raw": {"median": 300.0}},
        extra_columns=("queue_ms", "device"),
    )
    study = load.load_study(tmp_path)
    assert study.phases[0] == "queue_ms"
    phases, _ = figures.phase_figure(study)
    (queue,) = [c for c in phases.axes[0].containers if c.get_label() == "queue"]
    totals = [study.groups[0].offloaders[n].totals for n in ("deepcod", "raw")]
    assert [bar.get_height() for bar in queue] == pytest.approx(
        [np.mean(t) * 0.02 for t in totals], rel=1e-3
    )
    stacks = np.sum([[bar.get_height() for bar in c] for c in phases.axes[0].containers], axis=0)
    assert np.allclose(stacks, [np.mean(t) for t in totals], rtol=1e-4)
    text = report.write_report(tmp_path).read_text()
    assert "| offloader | device 0 | device 1 | device 2 |" in text
    per_device = study.groups[0].offloaders["deepcod"].per_device
    assert sorted(per_device) == ["0", "1", "2"]
    expected = ms(float(np.median(per_device["1"])))
    assert f"| deepcod | {ms(float(np.median(per_device['0'])))} | {expected} |" in text


def test_string_axis_several_deepcods_and_an_all_failed_sweep(tmp_path):
    spec = {**BASE, "deepcod_ratio0.1": {"median": 120.0, "bytes": 900}}
    cells = []
    for i, trace in enumerate(["/traces/a.up", "/traces/b.up"]):
        write_run(tmp_path / f"c{i}", spec, seed=i)
        cells.append({"id": f"c{i}", "dir": f"c{i}", "values": {"trace": trace}, "status": "done"})
    sweep = {
        "name": "t",
        "source": "s.yaml",
        "repeats": 1,
        "axes": {"trace": ["/traces/a.up", "/traces/b.up"]},
        "cells": cells,
    }
    (tmp_path / "sweep.json").write_text(json.dumps(sweep))
    text = report.write_report(tmp_path).read_text()
    assert "No latency-against-axis plot: no swept axis is numeric." in text
    assert "### deepcod\n" in text and "### deepcod_ratio0.1\n" in text
    assert "| trace=/traces/b.up |" in text
    # a sweep whose every cell failed still gets a report, saying so
    empty = tmp_path / "empty"
    empty.mkdir()
    cells = [{"id": "c0", "dir": "x", "values": {}, "status": "failed"}]
    (empty / "sweep.json").write_text(json.dumps({"name": "e", "axes": {}, "cells": cells}))
    text = report.write_report(empty).read_text()
    assert "0 done, 1 missing" in text and "nothing to report" in text


def test_bad_folders_exit_2_with_a_message(tmp_path, capsys):
    assert report.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "neither a run folder" in err
    (tmp_path / "sweep.json").write_text("{not json")
    assert report.main([str(tmp_path)]) == 2
    assert "sweep.json: not valid JSON" in capsys.readouterr().err
    (tmp_path / "sweep.json").write_text('{"cells": 3}')
    assert report.main([str(tmp_path)]) == 2
    assert "a list `cells`" in capsys.readouterr().err


def test_command_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "testbed.results.report", str(tmp_path / "nowhere")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "neither a run folder" in proc.stderr
    write_run(tmp_path, BASE)
    proc = subprocess.run(
        [sys.executable, "-m", "testbed.results.report", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(tmp_path / "report.md")


def test_a_detection_run_is_reported_as_detection_agreement(tmp_path):
    """Box counts in requests.csv (a detection plugin): the score is named detection
    agreement, not top-1 accuracy or agreement."""
    from testbed.models.predictions import Comparison

    def compare(prediction, reference):
        tp = len(prediction or []) if prediction == reference else 0
        fp, fn = len(prediction or []) - tp, len(reference) - tp
        return Comparison(fp == fn == 0 and prediction is not None, tp, fp, fn)

    box = [1.0, 2.0, 30.0, 40.0, 0.9]
    reference = {i: [box] * (i % 2) for i in range(20)}
    records = [
        {
            "offloader": name,
            "request": i,
            "sample": i,
            "total_ms": 100.0 + i,
            "bytes_up": 1000,
            "bytes_down": 70,
            "label": -1,
            "status": "ok",
            "prediction": [] if name == "jpeg" and i < 4 else reference[i],
        }
        for name in ("raw", "jpeg")
        for i in range(20)
    ]
    rows = results.complete_records(records, reference, compare)
    results.write_csv(tmp_path / "requests.csv", rows, results.REQUEST_COLUMNS)
    summary = results.summarize(rows, ["raw", "jpeg"], 1.0, "detection_agreement")
    results.write_csv(tmp_path / "summary.csv", summary, results.SUMMARY_COLUMNS)
    (tmp_path / "resolved_scenario.yaml").write_text(yaml.safe_dump({"name": "faces"}))
    (tmp_path / "environment.json").write_text("{}")
    assert load.load_study(tmp_path).metric == "detection"
    text = report.write_report(tmp_path).read_text()
    assert "detection agreement %" in text and "score: detection agreement" in text
    assert "| jpeg | 20 |" in text and "| 90.0 [" in text  # 2 of the 20 frames differ


def test_a_run_whose_choice_changes_gets_a_timeline(tmp_path):
    write_run(tmp_path, BASE)
    assert "timeline.png" not in report.write_report(tmp_path).read_text()  # fixed choices
    path = tmp_path / "requests.csv"
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns, rows = list(reader.fieldnames), list(reader)
    for i, row in enumerate(r for r in rows if r["offloader"] == "deepcod"):
        choice = {"mode": "local"} if i % 2 else {"split": 2, "bits": 4}
        row.update(choice=json.dumps(choice), intended_ms=str(100.0 * i))
    results.write_csv(path, rows, columns)
    text = report.write_report(tmp_path).read_text()
    assert "### Requests over time" in text and "](plots/timeline.png)" in text
    assert "`deepcod`" in text.split("### Requests over time")[1]
    assert_png(tmp_path / "plots" / "timeline.png")


def write_bound_sweep(folder: Path, bound: float = 1.0) -> dict:
    """jpeg (configured for 1 point under quality auto) is fastest at bw=4 but breaks the
    bound there; DeepCOD loses 5 points everywhere."""
    offloaders = ["raw", {"name": "jpeg", "quality": "auto", "max_drop_pp": 1.0}, "deepcod"]
    cells, pooled = [], {}
    for i, bw in enumerate([1, 2, 4]):
        spec = {
            "raw": {"median": 1000.0 / bw},
            "jpeg": {"median": 300.0 / bw, "wrong": 2 if bw == 4 else 0},
            "deepcod": {"median": 50.0, "wrong": 2},
        }
        extra = {"max_drop_pp": bound, "offloaders": offloaders}
        pooled[bw] = write_run(folder / f"c{i}", spec, seed=i, scenario_extra=extra)
        cells.append({"id": f"c{i}", "dir": f"c{i}", "values": {"bw": bw}, "status": "done"})
    sweep = {"name": "b", "repeats": 1, "axes": {"bw": [1, 2, 4]}, "cells": cells}
    (folder / "sweep.json").write_text(json.dumps(sweep))
    return pooled


def test_fastest_configuration_within_the_bound_and_broken_bounds(tmp_path):
    pooled = write_bound_sweep(tmp_path)
    study = load.load_study(tmp_path)
    best = compare.fastest_within(study, "jpeg")
    assert best is study.groups[1]  # bw=2: bw=4 is faster but 5 points over
    assert compare.fastest_within(study, "deepcod") is None
    assert compare.fastest_within(study, "raw") is study.groups[2]
    text = "\n".join(markdown.matched_section(study))
    median = estimate_text(stats.median_ci(pooled[2]["jpeg"]))
    assert f"| jpeg | bw=2 | {median} | +0.00 [-8.8, 8.8] | 2 of 3 cell-groups |" in text
    assert "| deepcod | none within the bound | - | - | 0 of 3 cell-groups |" in text
    warnings = markdown.warnings_section(study)
    assert warnings[0] == "## Warnings"
    assert (
        "- **Warning:** jpeg lost 5.00 accuracy points in bw=4 (over in 1 of 3 cell-groups), "
        "beyond its configured max_drop_pp (1) and the scenario's bound (1)." in warnings
    )
    assert (
        "- **Warning:** deepcod lost 5.00 accuracy points in bw=1 (over in 3 of 3 "
        "cell-groups), beyond the scenario's bound (1)." in warnings
    )
    assert not any("raw" in line for line in warnings)


def test_the_scenario_bound_is_read_from_the_run(tmp_path):
    """max_drop_pp 5 in the resolved scenario: DeepCOD's 5 points are within it, jpeg's
    at bw=4 still break its own configured bound of 1."""
    write_bound_sweep(tmp_path, bound=5.0)
    study = load.load_study(tmp_path)
    assert [g.bound for g in study.groups] == [5.0] * 3
    fastest = min(study.groups, key=lambda g: g.offloaders["deepcod"].median.value)
    assert compare.fastest_within(study, "deepcod") is fastest
    warnings = markdown.warnings_section(study)
    assert len(warnings) == 4 and "jpeg" in warnings[2] and "scenario" not in warnings[2]
    assert "`max_drop_pp` = 5 (points of drop)" in "\n".join(markdown.header(study, None))


def test_old_results_without_agreement_or_bound_still_render(tmp_path):
    """Results written before `agreement` and `max_drop_pp`: agreement comes from
    requests.csv's `agrees`, the bound is the default, and the metric is guessed."""
    write_run(tmp_path, {"raw": {"median": 900.0}, "deepcod": {"median": 100.0, "wrong": 8}})
    path = tmp_path / "requests.csv"
    with path.open(newline="") as handle:
        requests = list(csv.DictReader(handle))
    for row in requests:  # the unmodified model itself misses samples 0-3
        row["agrees"] = str(int(row["offloader"] == "deepcod" or int(row["sample"]) >= 4))
    results.write_csv(path, requests, results.REQUEST_COLUMNS)
    old = [c for c in results.SUMMARY_COLUMNS if c not in ("agreement", "within_bound")]
    with (tmp_path / "summary.csv").open(newline="") as handle:
        summary = list(csv.DictReader(handle))
    results.write_csv(tmp_path / "summary.csv", summary, old)
    study = load.load_study(tmp_path)
    assert study.metric == "accuracy" and study.groups[0].bound == 1.0
    group = study.groups[0]
    assert group.offloaders["raw"].agreement == pytest.approx(36 / 40)
    assert group.offloaders["deepcod"].agreement == 1.0
    text = report.write_report(tmp_path).read_text()
    assert "(points of drop; the default: the run recorded none)" in text
    assert "| 100.0 [91.2, 100.0] | 90.0 | +0.00 [-8.8, 8.8] | yes | 0 |" in text  # raw


def test_the_recorded_metric_wins_over_the_guess(tmp_path):
    write_run(tmp_path, BASE)
    assert load.load_study(tmp_path).metric == "accuracy"  # labels: the guess
    env = json.loads((tmp_path / "environment.json").read_text())
    (tmp_path / "environment.json").write_text(json.dumps({**env, "metric": "agreement"}))
    assert load.load_study(tmp_path).metric == "agreement"


def test_the_recorded_roles_decide_who_is_compared(tmp_path):
    """Runs record each offloader's role (environment.json `roles`); runs from before
    that know DeepCOD by its label."""
    spec = {**BASE, "jpeg": {"median": 1000.0, "wrong": 1}}
    write_run(tmp_path, spec)
    study = load.load_study(tmp_path)
    assert study.proposed == ["deepcod"]  # no roles recorded: by the label
    assert compare.baselines(study) == ["local", "raw", "jpeg"]
    env = json.loads((tmp_path / "environment.json").read_text())
    roles = {name: "baseline" for name in spec} | {"jpeg": "proposed"}
    (tmp_path / "environment.json").write_text(json.dumps({**env, "roles": roles}))
    study = load.load_study(tmp_path)
    assert study.proposed == ["jpeg"]
    assert compare.baselines(study) == ["local", "raw", "deepcod"]
    (row,) = compare.comparisons(study, "jpeg")
    assert row["deepcod"].claimed and row["deepcod"].verdict() == "jpeg slower"
    text = report.write_report(tmp_path).read_text()
    assert "| all requests | deepcod | 2.50 vs 2.50 |" in text and "| jpeg slower |" in text


def test_summary_md_states_the_runs_comparisons_and_what_it_recorded(tmp_path):
    """summary.md (written by the runner at the end of a run) compares the recorded
    proposed offloaders, and lists traffic, capture, fidelity and an interruption."""
    records = [
        {
            "offloader": name,
            "request": i,
            "sample": i,
            "total_ms": median + i,
            "bytes_up": 100,
            "bytes_down": 40,
            "prediction": i % 10 if i >= wrong else 99,
            "label": i % 10,
            "status": "ok",
        }
        for name, median, wrong in (("raw", 400.0, 0), ("jpeg", 300.0, 2), ("mine", 100.0, 2))
        for i in range(20)
    ]
    rows = results.complete_records(records, {i: i % 10 for i in range(20)})
    summary = results.summarize(rows, ["raw", "jpeg", "mine"], 1.0, "agreement", 1.0)
    env = {
        "link_backend": "htb+test",
        "rtt_ms": 20.25,
        "interrupted": True,
        "bounds": {"max_drop_pp": 1.0, "offloaders": {"jpeg": 1.0}},
        "roles": {"raw": "baseline", "jpeg": "baseline", "mine": "proposed"},
        "traffic": [{"flow": "bulk", "throughput_mbps": 0.5}, {"flow": "udp", "error": "gone"}],
        "capture": ["raw: 100 payload bytes"],
        "fidelity": ["uplink 1.00/1.00 Mbit/s"],
    }
    text = summary_md.write(tmp_path, rows, summary, env, "agreement").read_text()
    assert text.startswith(f"# {tmp_path.name}\n\nScore: agreement.\n\n| offloader |")
    assert "within it: raw." in text
    assert "mine (drop 10.00 points) at matched accuracy:" in text
    jpeg = paired.versus([rows], "mine", "jpeg", 10.0, 10.0)
    assert f"- jpeg: {jpeg.ratio_text()}, mine faster at no larger drop" in text
    assert "- raw loses less accuracy (drop 0.00 vs 10.00 points): no speedup claimed" in text
    assert "jpeg (drop" not in text  # a baseline: compared with, not compared
    assert "- **Warning:** jpeg lost 10.00 accuracy points, beyond its configured" in text
    assert "`accuracy` is top-1 agreement with the unsplit model (no labels)." in text
    assert "Link backend: htb+test; round trip 20.25 ms." in text
    assert "- bulk: 0.500 Mbit/s, ended\n- udp: no throughput, failed: gone\n" in text
    assert "On the wire (capture.pcap):\n\n- raw: 100 payload bytes\n" in text
    assert "Link fidelity (measured/expected):\n\n- uplink 1.00/1.00 Mbit/s\n" in text
    assert text.endswith("**The run was interrupted: these results are partial.**\n")


# ------------------------------------------------------------------ the setting


def test_setting_section_names_the_network_cpus_traffic_link_check_and_warnings(tmp_path):
    network = {
        "uplink": {
            "bandwidth_mbps": 1.0,
            "delay_ms": 20.0,
            "jitter_ms": 0.0,
            "jitter_distribution": "normal",
            "loss_pct": 0.5,
            "loss_model": "random",
            "queue_packets": 100,
        },
        "downlink": {"delay_ms": 20.0},
        "trace": {"downlink": "/abs/traces/step.down"},
    }
    write_run(
        tmp_path,
        BASE,
        scenario_extra={
            "network": network,
            "device": {"cpu": 0.03},
            "edge": {"cpu": 1.0},
            "devices": 1,
            "traffic": [{"type": "tcp_bulk", "direction": "up", "stop_s": None}],
        },
    )
    env = json.loads((tmp_path / "environment.json").read_text())
    env |= {
        "traffic": [
            {
                "flow": "tcp_bulk_up_0",
                "throughput_mbps": 0.891,
                "error": "interrupt - the server has terminated",
            },  # before `status`
            {"flow": "udp_cbr_up_1", "status": "failed", "error": "sink printed nothing"},
        ],
        "fidelity": ["uplink: ... OK", "downlink: ... FAIL (jitter)"],
        "cleanup_failures": ["qdisc left on s1-eth1"],
        "warnings": ["kernel warm-up took 12 s"],
    }
    (tmp_path / "environment.json").write_text(json.dumps(env))
    fidelity = {
        "uplink": {"ok": True, "skipped": []},
        "downlink": {
            "ok": False,
            "skipped": ["bandwidth_mbps"],
            "within_tolerance": {"jitter_ms": False},
            "measured": {"jitter_ms": 1.2},
            "expected": {"jitter_ms": 0.0},
        },
    }
    (tmp_path / "fidelity.json").write_text(json.dumps(fidelity))
    text = report.write_report(tmp_path).read_text()
    section = text.split("## Setting")[1].split("\n## ")[0]
    assert (
        "- Uplink: 1 Mbit/s, delay 20 ms, jitter 0 ms (normal), loss 0.5% (random), "
        "queue 100 packets" in section
    )
    assert "- Downlink: trace `step.down` (bandwidth over time), delay 20 ms" in section
    assert "- CPU: device 0.03 of a core (1 device host); edge 1 of a core" in section
    assert "  - planned: direction up, stop_s the run's end, type tcp_bulk" in section
    assert "  - tcp_bulk_up_0: 0.891 Mbit/s, stopped at the run's end\n" in section
    assert "  - udp_cbr_up_1: no throughput, failed: sink printed nothing" in section
    assert "  - uplink: OK" in section
    assert (
        "  - downlink: **off its configuration in 1 of 1 cell** (bandwidth_mbps not judged): "
        f"{tmp_path.name}: jitter_ms 1.2 vs 0.0" in section
    )
    for warning in (
        "kernel warm-up took 12 s",
        "link off its configuration: downlink: ... FAIL (jitter)",
        "cleanup failed: qdisc left on s1-eth1",
        "competing flow udp_cbr_up_1 no throughput, failed: sink printed nothing",
    ):
        assert f"  - {warning}\n" in section
    assert "interrupt" not in section  # an end, not an error


def test_setting_section_of_an_old_run_says_not_recorded(tmp_path):
    write_run(tmp_path, BASE)
    (tmp_path / "environment.json").write_text("{}")
    text = report.write_report(tmp_path).read_text()
    section = text.split("## Setting")[1].split("\n## ")[0]
    assert "- Uplink: not recorded" in section and "- Downlink: not recorded" in section
    assert "- CPU: device not recorded; edge not recorded" in section
    assert "- Competing traffic: not recorded" in section
    assert "- Link check (fidelity.json): not recorded" in section
    assert "  - environment.json not recorded" in section


def test_report_flags_a_bimodal_latency_and_a_bound_broken_beyond_its_interval(tmp_path):
    write_run(tmp_path, {"raw": {"median": 100.0}, "deepcod": {"median": 50.0, "wrong": 20}})
    rows = list(csv.DictReader((tmp_path / "requests.csv").open()))
    for row in rows:  # raw: half its requests 4x slower, a second mode
        if row["offloader"] == "raw" and int(row["sample"]) % 2:
            row["total_ms"] = str(4 * float(row["total_ms"]))
    with (tmp_path / "requests.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    text = report.write_report(tmp_path).read_text()
    warnings = text.split("## Warnings")[1].split("\n## ")[0]
    assert "**Bimodal latency:** raw: two modes" in warnings
    assert "deepcod: two modes" not in warnings
    assert "**Bound broken beyond its interval:** deepcod lost 50.00 [" in warnings
    assert "| NO: over beyond its CI |" in text and "| std ms |" in text


def test_console_sweep_table_is_the_reports_pooled_statistics(sweep):
    from testbed.experiment.sweep import SWEEP_TABLE_TITLE, sweep_table

    folder, pooled, text = sweep
    table = sweep_table(folder)
    assert "pooled" in SWEEP_TABLE_TITLE
    study = load.load_study(folder)
    for group in study.groups:
        s = group.offloaders["deepcod"]
        bw, devices = group.values["network.uplink.bandwidth_mbps"], group.values["devices"]
        # the median of the repeats' requests pooled, not of their medians
        assert s.median.value == pytest.approx(np.median(pooled[(bw, devices, "deepcod")]))
        cell = f"{estimate_text(s.median)} ({s.drop_pp:+.2f})"
        row = next(
            line for line in table.splitlines() if line.startswith(f"| {bw:g} | {devices} |")
        )
        assert cell in row
        assert estimate_text(s.median) in text  # the report shows the same median


# ------------------------------------------------- a run that lost its edge, stalls


def lost_edge_run(folder: Path) -> str:
    """A run folder as the runner writes it after losing the edge: raw ran 4 of 10
    requests (one stalled 10 s, one failed), local none; returns summary.md's text."""
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i, (total, status) in enumerate(
        [(40.0, "ok"), (10_042.0, "ok"), (45.0, "ok"), (12.0, "error")]
    ):
        records.append(
            {"offloader": "raw", "request": i, "sample": i, "total_ms": total, "label": i % 10}
            | {"bytes_up": 800, "bytes_down": 40, "prediction": i % 10, "status": status}
            | dict.fromkeys(SHARES, 1.0)
        )
    for name, first in (("raw", 4), ("local", 0)):
        for i in range(first, 10):
            records.append(
                {"offloader": name, "request": i, "sample": i, "total_ms": None}
                | {"label": i % 10, "prediction": -1, "status": "not_run"}
                | {"error": "not run: edge connection lost: reset by peer"}
            )
    stall = results.stall_thresholds(records, ["raw", "local"], "auto")
    rows = results.complete_records(records, {i: i % 10 for i in range(10)}, stall=stall)
    results.write_csv(folder / "requests.csv", rows, results.REQUEST_COLUMNS)
    summary = results.summarize(rows, ["raw", "local"], 1.0, "accuracy", 1.0, {}, 10, True)
    results.write_csv(folder / "summary.csv", summary, results.SUMMARY_COLUMNS)
    scenario = {"name": "lost", "model": "fashion_cnn", "samples": 10, "seed": 1}
    (folder / "resolved_scenario.yaml").write_text(yaml.safe_dump(scenario))
    env = {
        "link_backend": "htb+test",
        "rtt_ms": None,
        "partial": True,
        "partial_reason": "the edge agent exited (status -9) mid-run; 16 of 20 not run",
        "stall_ms": "auto",
        "stall_thresholds_ms": stall,
    }
    (folder / "environment.json").write_text(json.dumps(env))
    return summary_md.write(folder, rows, summary, env, "accuracy").read_text()


def test_a_partial_run_says_so_and_counts_what_did_not_run(tmp_path):
    text = lost_edge_run(tmp_path)
    assert "round trip not measured." in text and "0.00 ms" not in text
    assert "**The run did not finish: these results are partial (the edge agent exited" in text
    assert "**PARTIAL RUN: 4 of 20 planned requests ran; 16 were not run.**" in text
    assert "| 4 / 10 | 1 | 1 |" in text and "| 0 / 10 | 0 | 0 |" in text
    assert "**Warning:** raw: 1 request(s) stalled, longer than 1000 ms" in text
    assert "nan" not in text
    report_text = report.write_report(tmp_path).read_text()
    assert "- **PARTIAL: not every planned request ran** (the edge agent exited" in report_text
    assert "the run did not finish: its results are partial (the edge agent exited" in (report_text)
    assert "| not run | stalled |" in report_text
    study = load.load_study(tmp_path)
    raw = study.groups[0].offloaders["raw"]
    assert (raw.n, raw.failed, raw.not_run, raw.stalled) == (3, 1, 6, 1)
    assert raw.median.value == 45.0  # of the 3 ok requests; nothing of the 6 not run
    assert study.groups[0].offloaders["local"].not_run == 10
    assert "**Stalled requests:** raw: 1 of 4 took longer than the stall threshold" in (report_text)
    assert "the longest 10042 ms" in report_text


def test_a_whole_run_has_no_partial_or_stall_columns(tmp_path):
    write_run(tmp_path, BASE)
    text = report.write_report(tmp_path).read_text()
    assert "not run" not in text and "PARTIAL" not in text and "Stalled" not in text


def test_the_environment_line_names_the_edge_device():
    from testbed.results.markdown import _environment_text

    cpu = _environment_text({"kernel": "6.1", "edge_device": {"device": "cpu"}})
    assert cpu == "kernel 6.1, edge on cpu"
    gpu = _environment_text(
        {"edge_device": {"device": "cuda", "gpu": "H200", "driver": "570.1", "torch_cuda": "12.8"}}
    )
    assert gpu == "edge on cuda (H200, driver 570.1, CUDA 12.8)"
    assert "edge on" not in _environment_text({"kernel": "6.1"})
