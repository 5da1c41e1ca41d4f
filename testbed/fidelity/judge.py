"""Judge a measured link against its configuration.

Pure functions on the JSON that `testbed.fidelity.probe` prints; no processes, no I/O.
What a correct emulation should show differs from the configured numbers, so each
key is compared with an *expected* value:

- bandwidth_mbps: the link's rate, as a UDP train sent above it arrives (wire bits:
  payload + 42 bytes of headers, what the shaper counts). A lost packet leaves a gap:
  where loss takes the wire (the userspace element drops after serialization, as a
  lossy radio link does) the train arrives at rate x (1 - loss), and that is compared,
  with the binomial spread of the packets lost widening the window; netem drops
  before its queue, so there the train arrives at the full rate.
- tcp_goodput_mbps: TCP's goodput after its ramp is 0.956 x the rate (1448 payload
  bytes of each 1514-byte frame, with TCP timestamps). Reported always; judged only
  where it says something about the link (no loss, a fixed rate, a ramp that ends
  before the measured half of the transfer), else not judged, with the reason.
- delay_ms: configured one-way delay, plus the probe's serialization time at the
  configured rate (payload + 42 bytes of UDP/IP/Ethernet headers), plus a small
  processing allowance; processing can only add delay, so the allowance widens
  the window upwards only.
- jitter_ms: the sample std of the one-way delay: jitter_ms x JITTER_STD of its
  distribution (normal sigma = jitter_ms, uniform +-jitter_ms, Pareto shape 3 with
  mean excess jitter_ms; see emulation/link/impairments.py).
- loss_pct: exact binomial: the lost count must lie where the two-sided 99%
  Clopper-Pearson interval for the observed count still contains the configured
  probability. That equals "each binomial tail at the configured loss keeps at
  least 0.5%", which needs no inversion; `clopper_pearson` gives the interval too.
"""

from __future__ import annotations

import math
from typing import Any

KEYS = ("bandwidth_mbps", "tcp_goodput_mbps", "delay_ms", "jitter_ms", "loss_pct")
LABELS = {  # how summary_line names each key, and its unit
    "bandwidth_mbps": ("rate", "Mbit/s"),
    "tcp_goodput_mbps": ("TCP", "Mbit/s"),
    "delay_ms": ("delay", "ms"),
    "jitter_ms": ("jitter", "ms"),
    "loss_pct": ("loss", "%"),
}
# standard deviation of the delay per unit of `jitter_ms`, by distribution
JITTER_STD = {"normal": 1.0, "uniform": 1 / 3**0.5, "pareto": 3**0.5}
GOODPUT_RATIO = 0.956
HEADER_BYTES = 42  # UDP 8 + IPv4 20 + Ethernet 14: what HTB counts besides the payload
DEFAULT_PROBE_BYTES = 64  # udp-source's default --size

DEFAULT_TOLERANCE = {
    "goodput_ratio": GOODPUT_RATIO,
    "bandwidth_rel": 0.05,  # |rate - expected| <= 5% of expected, beyond loss's spread
    "goodput_rel": 0.05,  # |TCP goodput - expected| <= 5% of expected
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
    configured: dict,
    measured: dict,
    tolerance: dict | None = None,
    *,
    direction: str = "",
    loss_spends_rate: bool = True,
) -> dict:
    """Decides, key by key (KEYS), whether a measured link behaves as configured.

    `configured` holds bandwidth_mbps, delay_ms, jitter_ms, jitter_distribution and
    loss_pct as the scenario set them; delay/jitter/loss left out or None mean 0, a
    bandwidth left out or None means none was configured (a trace sets the rate).
    `measured` holds the KEYS measured (None: not measured), `probes` (probes sent,
    needed to judge loss), `lost` (else derived from loss_pct), `probe_bytes` (default
    64), `rate_packets` (the packets the rate was measured over) and `not_judged`
    ({key: why}: what the measurement says cannot be judged). `loss_spends_rate`: lost
    packets took their time on the wire (the userspace element; not netem).
    `tolerance` overrides entries of DEFAULT_TOLERANCE.

    Every key is judged or listed in "not_judged" with the reason ("skipped" lists
    the same keys). Returns {"direction", "configured", "measured", "expected",
    "bounds": {key: [lo, hi]}, "within_tolerance": {key: bool}, "skipped",
    "not_judged", "ok": all judged keys within, and at least one judged}.
    """
    tol = _tolerance(tolerance)
    conf = _configured(configured)
    meas: dict[str, Any] = {key: _num(measured, key) for key in KEYS}
    probe_bytes = int(measured.get("probe_bytes") or DEFAULT_PROBE_BYTES)
    why_not = dict(measured.get("not_judged") or {})

    expected: dict = dict.fromkeys(KEYS)
    bounds: dict = {}
    rate = conf["bandwidth_mbps"]
    if rate is None:
        why_not.setdefault("bandwidth_mbps", "no rate configured")
        why_not.setdefault("tcp_goodput_mbps", "no rate configured")
    else:
        packets = int(measured.get("rate_packets") or 0)
        loss = conf["loss_pct"] / 100 if loss_spends_rate else 0.0
        expected["bandwidth_mbps"], bounds["bandwidth_mbps"] = _rate_window(
            rate, loss, packets, tol
        )
        expected["tcp_goodput_mbps"] = tol["goodput_ratio"] * rate
        slack = tol["goodput_rel"] * expected["tcp_goodput_mbps"]
        bounds["tcp_goodput_mbps"] = [
            expected["tcp_goodput_mbps"] - slack,
            expected["tcp_goodput_mbps"] + slack,
        ]

    ideal = conf["delay_ms"]
    if rate is not None:
        ideal += serialization_ms(probe_bytes, rate, int(tol["header_bytes"]))
    expected["delay_ms"] = ideal + tol["processing_ms"]
    bounds["delay_ms"] = [
        max(0.0, ideal - tol["delay_ms"]),
        ideal + tol["processing_ms"] + tol["delay_ms"],
    ]

    std = conf["jitter_ms"] * JITTER_STD[conf["jitter_distribution"]]
    expected["jitter_ms"] = std
    slack = max(tol["jitter_ms"], tol["jitter_rel"] * std)
    bounds["jitter_ms"] = [max(0.0, std - slack), std + slack]

    expected["loss_pct"] = conf["loss_pct"]
    probes, lost = measured.get("probes"), None
    if probes:
        probes = int(probes)
        k_lo, k_hi = loss_acceptance(conf["loss_pct"] / 100, probes, tol["loss_confidence"])
        bounds["loss_pct"] = [100.0 * k_lo / probes, 100.0 * k_hi / probes]
        if measured.get("lost") is not None:
            lost = int(measured["lost"])
        elif meas["loss_pct"] is not None:
            lost = round(meas["loss_pct"] / 100 * probes)

    within: dict = {}
    for key in KEYS:
        if key in why_not:
            continue
        if meas[key] is None or key not in bounds:
            why_not[key] = "no probe counts" if key == "loss_pct" else "not measured"
        elif key == "loss_pct":
            # on counts: no rounding of percentages (lost is known wherever loss_pct is)
            within[key] = lost is not None and k_lo <= lost <= k_hi
        else:
            lo, hi = bounds[key]
            within[key] = lo <= meas[key] <= hi
    not_judged = {key: why_not[key] for key in KEYS if key in why_not}

    return {
        "direction": direction,
        "configured": conf,
        "measured": {
            **meas,
            "probes": probes,
            "lost": lost,
            "probe_bytes": probe_bytes,
            "rate_packets": measured.get("rate_packets"),
        },
        "expected": expected,
        "bounds": bounds,
        "within_tolerance": within,
        "skipped": list(not_judged),
        "not_judged": not_judged,
        "ok": bool(within) and all(within.values()),
    }


def _tolerance(tolerance: dict | None) -> dict:
    unknown = set(tolerance or {}) - set(DEFAULT_TOLERANCE)
    if unknown:
        raise ValueError(
            f"unknown tolerance keys {sorted(unknown)}; allowed: {sorted(DEFAULT_TOLERANCE)}"
        )
    return {**DEFAULT_TOLERANCE, **(tolerance or {})}


def _configured(configured: dict) -> dict:
    """The configuration as the scenario set it, checked; absent impairments are 0."""
    rate = _num(configured, "bandwidth_mbps")
    if rate is not None and rate <= 0:
        raise ValueError(f"configured bandwidth_mbps must be > 0, got {rate}")
    distribution = configured.get("jitter_distribution") or "normal"
    if distribution not in JITTER_STD:
        raise ValueError(
            f"configured jitter_distribution must be one of {sorted(JITTER_STD)}, "
            f"got {distribution!r}"
        )
    conf: dict[str, Any] = {
        "bandwidth_mbps": rate,
        "delay_ms": _num(configured, "delay_ms") or 0.0,
        "jitter_ms": _num(configured, "jitter_ms") or 0.0,
        "jitter_distribution": distribution,
        "loss_pct": _num(configured, "loss_pct") or 0.0,
    }
    if not 0.0 <= conf["loss_pct"] <= 100.0:
        raise ValueError(f"configured loss_pct must be in [0, 100], got {conf['loss_pct']}")
    return conf


def _rate_window(rate: float, loss: float, packets: int, tol: dict) -> tuple[float, list]:
    """Expected arrival rate of a train above `rate` that loses `loss` on the wire, and
    its window: bandwidth_rel each side, beyond the 99% binomial spread of the lost
    share among the `packets` the rate was measured over."""
    expected = rate * (1 - loss)
    lo_share = hi_share = 1 - loss
    if loss > 0 and packets > 0:
        sent = max(packets, round(packets / (1 - loss)))  # that crossed the bottleneck
        k_lo, k_hi = loss_acceptance(loss, sent, tol["loss_confidence"])
        lo_share, hi_share = 1 - k_hi / sent, 1 - k_lo / sent
    rel = tol["bandwidth_rel"]
    return expected, [rate * lo_share * (1 - rel), rate * hi_share * (1 + rel)]


def measured_from_probes(
    udp_sink: dict | None,
    tcp_sink: dict | None,
    probe_bytes: int,
    rate_sink: dict | None = None,
) -> dict:
    """Turns the sinks' JSON (testbed.fidelity.probe) into `compare`'s measured dict.

    Delay is the median (robust to a rare scheduling hiccup in the probe processes);
    jitter is the std of the delay; the rate is the arrival rate of the rate train
    (`rate_sink`); TCP's goodput is the one after its ramp. A sink that failed leaves
    its keys unmeasured, its error the reason.
    """
    measured: dict = dict.fromkeys(KEYS)
    measured["probe_bytes"] = probe_bytes
    why: dict = {}
    if rate_sink and not rate_sink.get("error"):
        rate = rate_sink.get("rate") or {}
        measured["bandwidth_mbps"] = rate.get("mbps")
        measured["rate_packets"] = rate.get("packets")
    elif rate_sink:
        why["bandwidth_mbps"] = f"rate probe failed: {rate_sink['error']}"
    if tcp_sink and not tcp_sink.get("error"):
        measured["tcp_goodput_mbps"] = tcp_sink.get("steady_goodput_mbps")
    elif tcp_sink:
        why["tcp_goodput_mbps"] = f"TCP probe failed: {tcp_sink['error']}"
    if udp_sink and udp_sink.get("expected"):
        delay = udp_sink.get("delay_ms") or {}
        measured["delay_ms"] = delay.get("median")
        measured["jitter_ms"] = delay.get("std")
        measured["loss_pct"] = udp_sink.get("loss_pct")
        measured["probes"] = udp_sink["expected"]
        measured["lost"] = udp_sink["expected"] - udp_sink["received"]
    elif udp_sink and udp_sink.get("error"):
        for key in ("delay_ms", "jitter_ms", "loss_pct"):
            why[key] = f"delay probe failed: {udp_sink['error']}"
    if why:
        measured["not_judged"] = why
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
    """One line per direction, each value as measured/expected, then OK or what failed;
    a key not judged says why."""
    name = direction or result.get("direction") or "link"
    m, e, within = result["measured"], result["expected"], result["within_tolerance"]
    why = result.get("not_judged") or {}

    def part(key: str) -> str:
        label, unit = LABELS[key]
        text = f"{label} {_fmt(m.get(key))}/{_fmt(e.get(key))} {unit}"
        if key in within:
            return text
        return f"{text} (not judged: {why.get(key, 'not measured')})"

    parts = [part(key) for key in KEYS]
    failed = [LABELS[k][0] for k in KEYS if within.get(k) is False]
    verdict = "OK" if result["ok"] else f"FAIL ({', '.join(failed) or 'nothing judged'})"
    return f"{name}: {', '.join(parts)} {verdict}"
