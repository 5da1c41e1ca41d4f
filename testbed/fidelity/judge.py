"""Judge a measured link against its configuration.

Pure functions on the JSON that `testbed.fidelity.probe` prints; no processes, no I/O.
What a correct emulation should show differs from the configured numbers, so each
key is compared with an *expected* value:

- bandwidth_mbps: TCP goodput is 0.956 x the HTB rate (1448 payload bytes of each
  1514-byte frame HTB counts, with TCP timestamps).
- delay_ms: configured one-way delay, plus the probe's serialization time at the
  configured rate (payload + 42 bytes of UDP/IP/Ethernet headers), plus a small
  processing allowance; processing can only add delay, so the allowance widens
  the window upwards only.
- jitter_ms: the sample std of the one-way delay (the link element draws normal
  jitter with sigma = jitter_ms).
- loss_pct: exact binomial: the lost count must lie where the two-sided 99%
  Clopper-Pearson interval for the observed count still contains the configured
  probability. That equals "each binomial tail at the configured loss keeps at
  least 0.5%", which needs no inversion; `clopper_pearson` gives the interval too.
"""

from __future__ import annotations

import math
from typing import Any

KEYS = ("bandwidth_mbps", "delay_ms", "jitter_ms", "loss_pct")
GOODPUT_RATIO = 0.956
HEADER_BYTES = 42  # UDP 8 + IPv4 20 + Ethernet 14: what HTB counts besides the payload
DEFAULT_PROBE_BYTES = 64  # udp-source's default --size

DEFAULT_TOLERANCE = {
    "goodput_ratio": GOODPUT_RATIO,
    "bandwidth_rel": 0.05,  # |goodput - expected| <= 5% of expected
    "delay_ms": 1.0,  # each side of the window
    "processing_ms": 0.5,  # userspace forwarding + timestamping, added on top
    "jitter_ms": 1.0,  # jitter passes within 1 ms OR within 25%
    "jitter_rel": 0.25,
    "loss_confidence": 0.99,
    "header_bytes": HEADER_BYTES,
}

_EPS = 1e-15
_TINY = 1e-300
_MAX_ITER = 100_000


# ---------------------------------------------------------------- binomial


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b): the binomial tails are its special cases.

    Continued fraction (DLMF 8.17.22) evaluated by the modified Lentz method; it
    converges fast for x < (a+1)/(a+b+2), otherwise the symmetry
    I_x(a, b) = 1 - I_{1-x}(b, a) is used.
    """
    if a <= 0 or b <= 0:
        raise ValueError(f"betainc needs a, b > 0, got {a}, {b}")
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - betainc(b, a, 1.0 - x)
    log_front = (
        a * math.log(x) + b * math.log1p(-x) + math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    )
    # 1 + d1/(1 + d2/(1 + ...)), d_{2m+1} = -(a+m)(a+b+m)x/((a+2m)(a+2m+1)),
    # d_{2m} = m(b-m)x/((a+2m-1)(a+2m))
    f, c, d = 1.0, 1.0, 0.0
    for j in range(1, _MAX_ITER):
        m = j // 2
        if j % 2:
            dj = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        else:
            dj = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        d = 1.0 + dj * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + dj / c
        c = c if abs(c) > _TINY else _TINY
        delta = c * d
        f *= delta
        if abs(delta - 1.0) < _EPS:
            return math.exp(log_front) / (a * f)
    raise ArithmeticError(f"betainc({a}, {b}, {x}) did not converge")


def binom_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    return betainc(k, n - k + 1, p)


def binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    return betainc(n - k, k + 1, 1.0 - p)


def clopper_pearson(k: int, n: int, confidence: float = 0.99) -> tuple[float, float]:
    """Exact two-sided interval for a binomial probability after k events in n trials."""
    _check_counts(k, n)
    alpha = 1.0 - confidence

    def solve(tail, target: float) -> float:
        # tail(p) is increasing in p; 100 halvings reach double precision
        lo, hi = 0.0, 1.0
        for _ in range(100):
            mid = (lo + hi) / 2
            if tail(mid) < target:
                lo = mid
            else:
                hi = mid
        return (lo + hi) / 2

    lower = 0.0 if k == 0 else solve(lambda p: binom_sf(k, n, p), alpha / 2)
    upper = 1.0 if k == n else solve(lambda p: 1.0 - binom_cdf(k, n, p), 1.0 - alpha / 2)
    return lower, upper


def loss_acceptance(p: float, n: int, confidence: float = 0.99) -> tuple[int, int]:
    """Range of lost counts out of n whose Clopper-Pearson interval contains p."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"loss probability must be in [0, 1], got {p}")
    _check_counts(0, n)
    half = (1.0 - confidence) / 2

    def first(pred) -> int:
        # smallest k in 0..n+1 with pred(k), pred monotone False..True
        lo, hi = 0, n + 1
        while lo < hi:
            mid = (lo + hi) // 2
            if pred(mid):
                hi = mid
            else:
                lo = mid + 1
        return lo

    k_lo = first(lambda k: binom_cdf(k, n, p) >= half)
    k_hi = first(lambda k: binom_sf(k, n, p) < half) - 1
    return k_lo, k_hi


def _check_counts(k: int, n: int) -> None:
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")


# ---------------------------------------------------------------- comparison


def serialization_ms(probe_bytes: int, rate_mbps: float, header_bytes: int = HEADER_BYTES) -> float:
    """Time the bottleneck needs to put one probe on the wire."""
    return (probe_bytes + header_bytes) * 8 / (rate_mbps * 1e6) * 1e3


def _num(d: dict, key: str) -> float | None:
    v = d.get(key)
    if v is None:
        return None
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f"{key} must be finite, got {v}")
    return v


def compare(
    configured: dict, measured: dict, tolerance: dict | None = None, *, direction: str = ""
) -> dict:
    """Decides, key by key, whether a measured link behaves as configured.

    `configured` and `measured` hold bandwidth_mbps, delay_ms, jitter_ms, loss_pct.
    A configured delay/jitter/loss left out or None means 0; a configured
    bandwidth left out, None or 0 means unlimited, and goodput is then not judged.
    `measured` may also hold `probes` (probes sent, needed to judge loss),
    `lost` (else derived from loss_pct) and `probe_bytes` (default 64).
    A key with no measurement is listed in "skipped", not judged. `tolerance`
    overrides entries of DEFAULT_TOLERANCE.

    Returns {"direction", "configured", "measured", "expected",
    "bounds": {key: [lo, hi]}, "within_tolerance": {key: bool}, "skipped": [...],
    "ok": all judged keys within, and at least one judged}.
    """
    unknown = set(tolerance or {}) - set(DEFAULT_TOLERANCE)
    if unknown:
        raise ValueError(
            f"unknown tolerance keys {sorted(unknown)}; allowed: {sorted(DEFAULT_TOLERANCE)}"
        )
    tol = {**DEFAULT_TOLERANCE, **(tolerance or {})}

    rate = _num(configured, "bandwidth_mbps")
    if rate is not None and rate < 0:
        raise ValueError(f"configured bandwidth_mbps must be >= 0, got {rate}")
    rate = rate or None
    conf: dict[str, Any] = {
        "bandwidth_mbps": rate,
        "delay_ms": _num(configured, "delay_ms") or 0.0,
        "jitter_ms": _num(configured, "jitter_ms") or 0.0,
        "loss_pct": _num(configured, "loss_pct") or 0.0,
    }
    meas: dict[str, Any] = {key: _num(measured, key) for key in KEYS}
    probe_bytes = int(measured.get("probe_bytes") or DEFAULT_PROBE_BYTES)
    probes = measured.get("probes")

    expected: dict = {}
    bounds: dict = {}
    within: dict = {}
    skipped: list = []

    if rate is not None:
        expected["bandwidth_mbps"] = tol["goodput_ratio"] * rate
        slack = tol["bandwidth_rel"] * expected["bandwidth_mbps"]
        bounds["bandwidth_mbps"] = [
            expected["bandwidth_mbps"] - slack,
            expected["bandwidth_mbps"] + slack,
        ]
    else:
        expected["bandwidth_mbps"] = None

    ideal = conf["delay_ms"]
    if rate is not None:
        ideal += serialization_ms(probe_bytes, rate, int(tol["header_bytes"]))
    expected["delay_ms"] = ideal + tol["processing_ms"]
    bounds["delay_ms"] = [
        max(0.0, ideal - tol["delay_ms"]),
        ideal + tol["processing_ms"] + tol["delay_ms"],
    ]

    expected["jitter_ms"] = conf["jitter_ms"]
    slack = max(tol["jitter_ms"], tol["jitter_rel"] * conf["jitter_ms"])
    bounds["jitter_ms"] = [max(0.0, conf["jitter_ms"] - slack), conf["jitter_ms"] + slack]

    expected["loss_pct"] = conf["loss_pct"]
    if not 0.0 <= conf["loss_pct"] <= 100.0:
        raise ValueError(f"configured loss_pct must be in [0, 100], got {conf['loss_pct']}")
    lost = None
    if probes:
        probes = int(probes)
        k_lo, k_hi = loss_acceptance(conf["loss_pct"] / 100, probes, tol["loss_confidence"])
        bounds["loss_pct"] = [100.0 * k_lo / probes, 100.0 * k_hi / probes]
        if measured.get("lost") is not None:
            lost = int(measured["lost"])
        elif meas["loss_pct"] is not None:
            lost = round(meas["loss_pct"] / 100 * probes)

    for key in KEYS:
        if meas[key] is None or key not in bounds:
            skipped.append(key)
            continue
        if key == "loss_pct":
            # on counts: no rounding of percentages (lost is known wherever loss_pct is)
            within[key] = lost is not None and k_lo <= lost <= k_hi
        else:
            lo, hi = bounds[key]
            within[key] = lo <= meas[key] <= hi

    return {
        "direction": direction,
        "configured": conf,
        "measured": {**meas, "probes": probes, "lost": lost, "probe_bytes": probe_bytes},
        "expected": expected,
        "bounds": bounds,
        "within_tolerance": within,
        "skipped": skipped,
        "ok": bool(within) and all(within.values()),
    }


def measured_from_probes(udp_sink: dict | None, tcp_sink: dict | None, probe_bytes: int) -> dict:
    """Turns the sinks' JSON (testbed.fidelity.probe) into `compare`'s measured dict.

    Delay is the median (robust to a rare scheduling hiccup in the probe
    processes); jitter is the std of the delay.
    """
    measured: dict = dict.fromkeys(KEYS)
    measured["probe_bytes"] = probe_bytes
    if tcp_sink and not tcp_sink.get("error"):
        measured["bandwidth_mbps"] = tcp_sink.get("goodput_mbps")
    if udp_sink and udp_sink.get("expected"):
        delay = udp_sink.get("delay_ms") or {}
        measured["delay_ms"] = delay.get("median")
        measured["jitter_ms"] = delay.get("std")
        measured["loss_pct"] = udp_sink.get("loss_pct")
        measured["probes"] = udp_sink["expected"]
        measured["lost"] = udp_sink["expected"] - udp_sink["received"]
    return measured


# ---------------------------------------------------------------- report


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    ax = abs(x)
    if ax >= 100:
        return f"{x:.1f}"
    if ax >= 10:
        return f"{x:.2f}"
    return f"{x:.3f}"


def summary_line(result: dict, direction: str | None = None) -> str:
    """One line per direction, each value as measured/expected, then OK or what failed."""
    name = direction or result.get("direction") or "link"
    m, e, within = result["measured"], result["expected"], result["within_tolerance"]

    def part(key: str, label: str, unit: str) -> str:
        text = f"{label}{_fmt(m.get(key))}/{_fmt(e.get(key))} {unit}"
        return text if key in within else f"{text} (not judged)"

    parts = [
        part("bandwidth_mbps", "", "Mbit/s"),
        part("delay_ms", "delay ", "ms"),
        part("jitter_ms", "jitter ", "ms"),
        part("loss_pct", "loss ", "%"),
    ]
    failed = [k.split("_")[0] for k in KEYS if within.get(k) is False]
    verdict = "OK" if result["ok"] else f"FAIL ({', '.join(failed) or 'nothing judged'})"
    return f"{name}: {', '.join(parts)} {verdict}"
