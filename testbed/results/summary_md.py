"""summary.md: the short human-readable account of one run, written as the run ends.

It holds the summary table, the comparisons at matched accuracy and what the run
recorded about its link, competing traffic, capture and fidelity. report.md (`report`)
is the long account, with intervals and plots, and can be re-rendered at any time; this
one is written once, from what the runner has in hand.
"""

from __future__ import annotations

from pathlib import Path

from testbed.results import records, roles, setting

SCORE_NOTES = {
    "detection_agreement": "`accuracy` is detection agreement: the share of images whose "
    "boxes all match the unmodified detector's (IoU >= 0.5, one to one); precision and "
    "recall pool the boxes (summary.csv).",
    "agreement": "`accuracy` is top-1 agreement with the unsplit model (no labels).",
}


def write(
    out_dir: Path, rows: list[dict], summary: list[dict], environment: dict, metric: str
) -> Path:
    """Write `out_dir/summary.md` from the run's requests (`rows`, as in requests.csv), its
    summary (summary.csv's rows) and its environment.json (bounds, roles, link, traffic,
    capture, fidelity, interrupted); returns its path."""
    bounds = environment.get("bounds") or {}
    bound = bounds.get("max_drop_pp", records.DEFAULT_MAX_DROP_PP)
    configured = bounds.get("offloaders") or {}
    labels = [s["offloader"] for s in summary]
    proposed = roles.proposed(labels, environment.get("roles"))
    lines = [f"# {out_dir.name}", "", f"Score: {metric}.", "", records.table(summary), ""]
    lines += [*records.matched_lines(rows, summary, bound, configured, proposed, metric), ""]
    if metric != "accuracy":
        lines.append(SCORE_NOTES.get(metric, SCORE_NOTES["agreement"]))
    rtt = environment.get("rtt_ms")
    rtt_text = f"{rtt:.2f} ms" if isinstance(rtt, int | float) else "not measured"
    lines.append(f"Link backend: {environment['link_backend']}; round trip {rtt_text}.")
    lines += [f"\n**Warning:** {w}" for w in environment.get("warnings") or []]  # loopback's
    lines += stall_lines(summary, environment)
    if environment.get("traffic"):
        lines += ["", "Competing traffic (achieved):", ""]
        for flow in environment["traffic"]:
            lines.append(f"- {flow['flow']}: {setting.flow_text(flow)}")
    if environment.get("capture"):
        lines += ["", "On the wire (capture.pcap):", ""]
        lines += [f"- {line}" for line in environment["capture"]]
    if environment.get("fidelity"):
        lines += ["", "Link fidelity (measured/expected):", ""]
        lines += [f"- {line}" for line in environment["fidelity"]]
    if environment.get("partial"):
        why = environment.get("partial_reason") or "interrupted"
        lines += ["", f"**The run did not finish: these results are partial ({why}).**"]
    elif environment.get("interrupted"):
        lines.append("**The run was interrupted: these results are partial.**")
    path = out_dir / "summary.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def stall_lines(summary: list[dict], environment: dict) -> list[str]:
    """A warning per offloader with stalled requests (requests.csv `stalled`)."""
    limits = environment.get("stall_thresholds_ms") or {}
    lines = []
    for s in summary:
        count = s.get("stalled") or 0
        if count and s["offloader"] in limits:
            lines.append(
                f"**Warning:** {s['offloader']}: {count} request(s) stalled, longer than "
                f"{limits[s['offloader']]:.0f} ms (`stall_ms`: "
                f"{environment.get('stall_ms')}); see `stalled` in requests.csv."
            )
    return ["", *lines, ""] if lines else []
