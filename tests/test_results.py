import csv
import math

import numpy as np
import pytest

from testbed.results import paired, stats
from testbed.results import records as results


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


def test_agreement_beside_accuracy_with_wilson_interval_and_bound():
    """Labels and the unmodified model disagree on samples 0-1: accuracy counts the
    labels, agreement the unmodified model's predictions."""
    reference = {s: s % 10 for s in range(10)}
    labels = {s: (s + 1) % 10 if s < 2 else s % 10 for s in range(10)}
    records = [record("raw", s, 10.0 + s, reference[s], labels[s]) for s in range(10)]
    # jpeg agrees with the model on 7 samples, and is right on 7 labels (not the same 7)
    records += [
        record("jpeg", s, 5.0, labels[s] if s < 2 else reference[s], labels[s]) for s in range(7)
    ]
    records += [record("jpeg", s, 5.0, 99, labels[s]) for s in range(7, 10)]
    rows = results.complete_records(records, reference)
    summary = {
        s["offloader"]: s
        for s in results.summarize(rows, ["raw", "jpeg"], 0.8, "accuracy", max_drop_pp=1.0)
    }
    raw, jpeg = summary["raw"], summary["jpeg"]
    assert raw["accuracy"] == 0.8 and raw["agreement"] == 1.0 and raw["within_bound"] == 1
    assert jpeg["accuracy"] == 0.7 and jpeg["agreement"] == 0.5
    assert jpeg["accuracy_drop_pp"] == pytest.approx(10.0) and jpeg["within_bound"] == 0
    assert (jpeg["accuracy_lo"], jpeg["accuracy_hi"]) == pytest.approx((0.3968, 0.8922), abs=1e-4)
    assert raw["mean_ms"] == pytest.approx(14.5) and raw["p50_ms"] == pytest.approx(14.5)
    for column in ("agreement", "accuracy_lo", "accuracy_hi", "mean_ms", "within_bound"):
        assert column in results.SUMMARY_COLUMNS
    table = results.table(list(summary.values()))
    assert "| accuracy [95% CI] | agreement | drop pp [95% CI] | in bound | vs raw |" in table
    assert "| 70.0% [39.7, 89.2] | 50.0% | +10.00 [-31.5, 47.5] | no | loses more |" in table
    (agreement,) = results.summarize(rows[:10], ["raw"], 1.0, "agreement")
    assert agreement["accuracy"] == agreement["agreement"] == 1.0


def test_wilson_interval():
    textbook = stats.wilson(90, 100)  # the rate-accuracy curves' intervals too
    assert (round(textbook.low, 4), round(textbook.high, 4)) == (0.8256, 0.9448)
    assert stats.wilson(0, 10).low == 0.0 and stats.wilson(10, 10).high == 1.0
    e = stats.wilson(7, 10)
    assert e.value == 0.7 and e.low == pytest.approx(0.3968, abs=1e-4)
    assert math.isnan(stats.wilson(0, 0).value)


def timed(offloader, sample, total, ok=True):
    return {
        "offloader": offloader,
        "sample": sample,
        "total_ms": total,
        "status": "ok" if ok else "timeout",
    }


def test_pairs_are_the_same_samples_within_a_cell():
    cell = [timed("a", 3, 10.0), timed("a", 1, 20.0), timed("a", 2, 30.0, ok=False)]
    cell += [timed("b", 1, 200.0), timed("b", 2, 300.0), timed("b", 3, 100.0)]
    mine, theirs = paired.paired_totals([cell, [timed("a", 1, 5.0), timed("b", 1, 7.0)]], "a", "b")
    assert mine.tolist() == [20.0, 10.0, 5.0] and theirs.tolist() == [200.0, 100.0, 7.0]


def test_a_speedup_is_claimed_only_over_an_offloader_losing_no_less():
    cell = [
        timed(n, s, t * (1 + s / 100)) for s in range(30) for n, t in (("d", 10.0), ("j", 40.0))
    ]
    better = paired.versus([cell], "d", "j", drop_pp=5.0, other_drop_pp=1.0)
    assert not better.claimed and math.isnan(better.ratio.value)
    assert better.verdict() == (
        "j loses less accuracy (drop 1.00 vs 5.00 points): no speedup claimed"
    )
    assert better.ratio_text() == "-"
    same = paired.versus([cell], "d", "j", drop_pp=5.0, other_drop_pp=5.0)
    assert same.claimed and same.pairs == 30
    assert same.ratio.value == pytest.approx(4.0) and same.ratio.low > 3.5
    assert same.verdict() == "d faster at no larger drop"
    assert same.ratio_text().endswith("(paired, 30 pairs)")
    assert paired.claimable(1.0, 1.0) and not paired.claimable(float("nan"), 5.0)


def test_fastest_within_the_bound():
    points = [("a", 10.0, 3.0), ("b", 20.0, 1.0), ("c", 15.0, 0.5), ("d", 1.0, float("nan"))]
    assert results.fastest_within(points, 1.0) == "c"
    assert results.fastest_within(points, 3.0) == "a"
    assert results.fastest_within(points, 0.1) is None


def test_configured_bounds_and_warnings():
    offloaders = [
        "raw",
        {"name": "jpeg", "quality": "auto", "max_drop_pp": 1.0},
        {"name": "webp", "quality": 75, "max_drop_pp": 1.0},
        {"name": "jalad", "max_drop_pp": 10},
    ]
    configured = results.configured_bounds(offloaders)
    assert configured == {"jpeg": 1.0, "jalad": 10.0}  # a fixed quality aims at no bound
    twice = [{"name": "jalad", "max_drop_pp": 2}, {"name": "jalad", "max_drop_pp": 3}]
    assert results.configured_bounds(twice) == {
        "jalad_max_drop_pp2": 2.0,
        "jalad_max_drop_pp3": 3.0,
    }
    assert results.configured_bounds(twice, ["x", "y"]) == {"x": 2.0, "y": 3.0}
    drops = {"raw": 0.0, "jpeg": 2.0, "webp": 3.0, "jalad": 5.0}
    lines = results.bound_warnings(drops, 4.0, configured)
    assert lines == [
        "**Warning:** jpeg lost 2.00 accuracy points, beyond its configured max_drop_pp (1).",
        "**Warning:** jalad lost 5.00 accuracy points, beyond the scenario's bound (4).",
    ]


def test_summary_md_lines_claim_nothing_over_an_offloader_losing_less():
    reference = {s: s % 10 for s in range(20)}
    records = [record("raw", s, 100.0 + s, s % 10, s % 10) for s in range(20)]
    records += [record("jpeg", s, 40.0 + s, 99 if s < 2 else s % 10, s % 10) for s in range(20)]
    records += [record("deepcod", s, 10.0 + s, 99 if s < 5 else s % 10, s % 10) for s in range(20)]
    rows = results.complete_records(records, reference)
    summary = results.summarize(rows, ["raw", "jpeg", "deepcod"], 1.0, "accuracy")
    text = "\n".join(results.matched_lines(rows, summary, 1.0, {"jpeg": 1.0}))
    assert "within it: raw." in text
    assert "- raw loses less accuracy (drop 0.00 vs 25.00 points): no speedup claimed" in text
    assert "- jpeg loses less accuracy (drop 10.00 vs 25.00 points): no speedup claimed" in text
    assert "- No offloader loses at least as much accuracy: no speedup claimed." in text
    assert "x [" not in text
    assert "- **Warning:** jpeg lost 10.00 accuracy points, beyond its configured" in text
    table = results.table(summary)
    assert "| loses more |" in table and "| 1.0x |" in table  # raw against itself


# ------------------------------------------------ statistics beside the percentiles


def test_std_is_the_sample_standard_deviation():
    assert stats.std([1.0, 2.0, 3.0, 4.0]) == pytest.approx(1.2909944, abs=1e-7)
    assert math.isnan(stats.std([5.0])) and math.isnan(stats.std([]))


def test_paired_difference_newcombe_interval():
    """Newcombe's method 10 (Altman et al.'s continuity-corrected correlation): the
    Bentur et al. table (1, 1, 7, 12) gives -28.6 points [-50.7, -2.6]."""
    e = stats.discordant_difference(1, 1, 7, 12)
    assert (e.value, e.low, e.high) == pytest.approx((-6 / 21, -0.50692, -0.02556), abs=1e-4)
    # the same from 0/1 outcomes: a both right, b first only, c second only, d neither
    first = [1] * 1 + [1] * 1 + [0] * 7 + [0] * 12
    second = [1] * 1 + [0] * 1 + [1] * 7 + [0] * 12
    assert stats.paired_difference(first, second) == e
    # identical outcomes: no difference, an interval around 0 that narrows with n
    small = stats.paired_difference([1, 0] * 10, [1, 0] * 10)
    large = stats.paired_difference([1, 0] * 100, [1, 0] * 100)
    assert small.value == large.value == 0 and small.low < large.low < 0 < large.high
    assert math.isnan(stats.paired_difference([], []).value)


def test_bimodal_flags_two_modes_not_a_tail_or_one_mode():
    rng = np.random.default_rng(0)
    two = np.r_[rng.normal(100, 3, 60), rng.normal(200, 5, 40)]
    flagged, d, share = stats.bimodal(two)
    assert flagged and d > 10 and share == pytest.approx(0.4)
    for one in (rng.normal(100, 10, 500), rng.lognormal(5, 0.5, 500), rng.uniform(1, 2, 500)):
        assert not stats.bimodal(one)[0]
    tail = np.r_[rng.normal(100, 3, 18), [400.0, 420.0]]  # 2 retransmissions: a tail
    assert not stats.bimodal(tail)[0]
    assert not stats.bimodal(two[:19])[0]  # too few to say


def test_speedups_print_with_significant_digits():
    from testbed.results.formatting import factor_text, significant

    assert factor_text(stats.Estimate(0.0123, 0.0111, 0.0131)) == "0.012x [0.011, 0.013]"
    assert factor_text(stats.Estimate(3.4, 3.1, 3.8)) == "3.4x [3.1, 3.8]"
    assert [significant(x) for x in (0.0996, 120.0, 1.04, 0.0)] == ["0.10", "120", "1.0", "0"]
    assert factor_text(stats.NAN) == "-"
    assert factor_text(stats.Estimate(1.3, 1.04, 1.8)) == "1.3x [1.04, 1.8]"  # above 1
    assert factor_text(stats.Estimate(1.3, 1.0, 1.8)) == "1.3x [1.0, 1.8]"


def test_a_drop_over_its_bound_beyond_its_interval_is_flagged():
    assert results.over(stats.Estimate(5.0, 3.0, 7.0), 1.0)
    assert not results.over(stats.Estimate(5.0, 0.5, 9.0), 1.0)  # over, but not beyond
    assert not results.over(stats.Estimate(5.0, math.nan, math.nan), 1.0)
    reference = {s: s % 10 for s in range(40)}
    records = [record("raw", s, 10.0 + s, s % 10, s % 10) for s in range(40)]
    # jpeg wrong on 20 of 40: a 50-point drop, far beyond a 1-point bound
    records += [record("jpeg", s, 5.0, 99 if s < 20 else s % 10, s % 10) for s in range(40)]
    # webp wrong on 1 of 40: 2.5 points, over the bound but within its interval
    records += [record("webp", s, 5.0, 99 if s < 1 else s % 10, s % 10) for s in range(40)]
    rows = results.complete_records(records, reference)
    summary = {
        s["offloader"]: s
        for s in results.summarize(rows, ["raw", "jpeg", "webp"], 1.0, "accuracy", 1.0)
    }
    jpeg, webp = summary["jpeg"], summary["webp"]
    assert jpeg["over_bound"] == 1 and jpeg["drop_lo_pp"] > 1.0
    assert webp["within_bound"] == 0 and webp["over_bound"] == 0 and webp["drop_lo_pp"] < 1.0
    paired = stats.discordant_difference(20, 20, 0, 0)  # reference right on all, jpeg on 20
    assert (jpeg["drop_lo_pp"], jpeg["drop_hi_pp"]) == pytest.approx(
        (100 * paired.low, 100 * paired.high)
    )
    assert summary["raw"]["std_ms"] == pytest.approx(stats.std(10.0 + np.arange(40)))
    table = results.table(list(summary.values()))
    assert "| std ms |" in table and "| NO: over beyond its CI |" in table
    # a configured bound tighter than the scenario's is the one broken
    loose = results.summarize(rows, ["webp"], 1.0, "accuracy", 50.0, {"webp": 0.1})
    assert loose[0]["within_bound"] == 1 and loose[0]["drop_lo_pp"] < 0.1
    tight = results.summarize(rows, ["jpeg"], 1.0, "accuracy", 60.0, {"jpeg": 1.0})
    assert tight[0]["within_bound"] == 1 and tight[0]["over_bound"] == 1


def test_paired_score_difference_between_offloaders():
    rows = [timed("a", s, 10.0) for s in range(4)] + [timed("b", s, 20.0) for s in range(4)]
    for row in rows:
        row["correct"] = int(row["offloader"] == "a" or row["sample"] < 2)
    v = paired.versus([rows], "a", "b", 0.0, 50.0)
    assert v.score_pairs == 4
    assert v.score_diff == stats.discordant_difference(2, 2, 0, 0)
    assert v.score_diff_text().startswith("+50.00 [")


# ------------------------------------------------------- requests not run, stalled


def lost_run():
    """raw: 2 ok (one of them 10 s), one lost in flight, 3 never run; local: all 6 ran."""
    reference = dict.fromkeys(range(6), 1)
    records = [record("local", s, 5.0, 1, 1, bytes_up=0) for s in range(6)]
    records += [record("raw", 0, 40.0, 1, 1), record("raw", 1, 10_042.0, 1, 1)]
    records += [record("raw", 2, 12.0, -1, 1, status="error")]
    for s in (3, 4, 5):
        records.append({**record("raw", s, None, -1, 1, status="not_run"), "intended_ms": None})
    return records, reference


def test_requests_not_run_are_counted_but_in_no_statistic():
    records, reference = lost_run()
    rows = results.complete_records(records, reference, stall={"raw": 1000.0, "local": 1000.0})
    assert [r["stalled"] for r in rows[6:9]] == [0, 1, 0]
    for row in rows[9:]:  # nothing measured: blank, not 0
        assert row["total_ms"] == row["uplink_ms"] == row["correct"] == row["stalled"] == ""
        assert row["status"] == "not_run"
    summary = {
        s["offloader"]: s
        for s in results.summarize(rows, ["local", "raw"], 1.0, "accuracy", planned=6, partial=True)
    }
    raw = summary["raw"]
    assert (raw["n"], raw["failed"], raw["not_run"], raw["planned"]) == (2, 1, 3, 6)
    assert raw["accuracy"] == pytest.approx(2 / 3)  # of the 3 that ran: never 2/6
    assert raw["p50_ms"] == pytest.approx((40.0 + 10_042.0) / 2)
    assert raw["stalled"] == 1 and raw["partial"] == 1
    table = results.table(list(summary.values()))
    assert "**Stalled requests** (longer than `stall_ms`, still in the figures): raw 1;" in table
    assert "| 2 | 5041.0 |" in table and "| 3 / 6 | 1 | 1 |" in table
    assert summary["local"]["not_run"] == 0 and summary["local"]["partial"] == 1
    for column in ("planned", "not_run", "stalled", "partial"):
        assert column in results.SUMMARY_COLUMNS


def test_an_offloader_that_never_ran_has_no_figures_made_up():
    records = [{**record("raw", s, None, -1, 1, status="not_run")} for s in range(3)]
    rows = results.complete_records(records, dict.fromkeys(range(3), 1))
    (raw,) = results.summarize(rows, ["raw"], 1.0, "accuracy", planned=3, partial=True)
    assert raw["n"] == 0 and raw["not_run"] == 3 and raw["failed"] == 0
    for key in ("p50_ms", "mean_bytes_up", "accuracy", "accuracy_drop_pp"):
        assert math.isnan(raw[key]), key
    table = results.table([raw])
    row = table.splitlines()[2]
    assert "nan" not in table and row.startswith("| raw | 0 | - | - | - | - | - | - | - |")
    assert row.endswith("| 0 / 3 | 0 | 0 |")
    assert "**PARTIAL RUN: 0 of 3 planned requests ran; 3 were not run.**" in table


def test_the_console_table_of_a_whole_run_keeps_its_columns():
    records, reference = lost_run()
    whole = [r for r in records if r["status"] == "ok" and r["total_ms"] < 1000]
    rows = results.complete_records(whole, reference)
    table = results.table(results.summarize(rows, ["local", "raw"], 1.0, "accuracy"))
    assert "ran / planned" not in table and "PARTIAL" not in table
    assert table.splitlines()[0].endswith("| encode ms | choice |")


def test_stall_thresholds_auto_fixed_and_off():
    records = [record("raw", s, t, 1, 1) for s, t in enumerate([200.0, 300.0, 400.0])]
    records += [record("local", s, 1.0, 1, 1) for s in range(3)]
    auto = results.stall_thresholds(records, ["raw", "local", "jpeg"], "auto")
    assert auto == {"raw": 3000.0, "local": 1000.0, "jpeg": 1000.0}  # 10 x median, >= 1 s
    assert results.stall_thresholds(records, ["raw"], 250.0) == {"raw": 250.0}
    assert results.stall_thresholds(records, ["raw"], None) == {}
    rows = results.complete_records(records, dict.fromkeys(range(3), 1), stall={})
    assert {r["stalled"] for r in rows} == {""}  # off: not judged


def test_a_timeout_is_not_also_stalled():
    records = [record("raw", 0, 30_000.0, -1, 1, status="timeout")]
    (row,) = results.complete_records(records, {0: 1}, stall={"raw": 1000.0})
    assert row["stalled"] == 0


def test_a_partial_drop_is_against_the_reference_on_the_samples_that_ran():
    """The unsplit model is right on samples 0-1 only; raw ran those and was right: no
    drop, though the run's reference score (2 of 4) would say -50 points."""
    records = [record("raw", s, 10.0, s, s) for s in (0, 1)]
    reference = {0: 0, 1: 1, 2: 9, 3: 9}
    rows = results.complete_records(records, reference)
    (raw,) = results.summarize(rows, ["raw"], 0.5, "accuracy", planned=4, partial=True)
    assert raw["accuracy"] == 1.0 and raw["accuracy_drop_pp"] == 0.0
    (whole,) = results.summarize(rows, ["raw"], 0.5, "accuracy")
    assert whole["accuracy_drop_pp"] == -50.0  # all planned ran: the run's reference
