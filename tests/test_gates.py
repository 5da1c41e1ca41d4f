import pytest

from testbed.config import gates

SUMMARY = {
    "raw": {"p50_ms": 50.0, "accuracy": 0.9, "accuracy_drop_pp": 0.0, "speedup_vs_raw": 1.0},
    "local": {"p50_ms": 10.0, "accuracy": 0.9, "accuracy_drop_pp": 0.0, "speedup_vs_raw": 5.0},
}


@pytest.mark.parametrize(
    "text, holds",
    [
        ("local.p50_ms < 0.5 * raw.p50_ms", True),
        ("local.p50_ms > 0.5 * raw.p50_ms", False),
        ("raw.accuracy_drop_pp <= 1.0 and local.accuracy >= 0.89", True),
        ("raw.accuracy_drop_pp > 1.0 or local.accuracy < 0.5", False),
        ("0 < local.p50_ms < raw.p50_ms", True),
        ("local.speedup_vs_raw - 4 >= -(-1)", True),
    ],
)
def test_evaluate(text, holds):
    result, filled = gates.evaluate(text, SUMMARY)
    assert result is holds
    assert "local.p50_ms = 10" in filled or "local." not in text or "p50" not in text


def test_failing_gate_reports_its_values():
    holds, filled = gates.evaluate("raw.p50_ms < 2 * local.p50_ms", SUMMARY)
    assert not holds
    assert filled == "raw.p50_ms < 2 * local.p50_ms  (raw.p50_ms = 50, local.p50_ms = 10)"


@pytest.mark.parametrize(
    "text, message",
    [
        ("__import__('os').system('true')", "comparison"),
        ("raw.p50_ms < __import__('os')", "not allowed"),
        ("raw.latency < 3", "unknown metric 'latency'"),
        ("raw < 3", "'raw' alone"),
        ("raw.p50_ms", "comparison"),
        ("raw.p50_ms <", "not an expression"),
        ("raw.p50_ms < 'a'", "not allowed"),
        ("raw.p50_ms.real < 3", "OFFLOADER.METRIC"),
    ],
)
def test_rejects_anything_but_comparisons_of_metrics(text, message):
    with pytest.raises(gates.GateSyntaxError, match=message):
        gates.parse(text)


def test_offloaders_named():
    assert gates.offloaders_named("raw.p50_ms < 2 * local.p50_ms") == {"raw", "local"}


def test_unknown_offloader_at_evaluation():
    with pytest.raises(gates.GateSyntaxError, match="did not run"):
        gates.evaluate("jpeg.p50_ms < 1", SUMMARY)
