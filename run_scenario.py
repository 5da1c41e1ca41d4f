#!/usr/bin/env python3
"""Run a deepcod-testbed scenario: `python run_scenario.py scenarios/lowbw.yaml`.

Exit status: 0 ok; 2 bad input; 3 missing environment; 4 an `expect:` gate failed;
130/143 interrupted (Ctrl-C / SIGTERM, after cleaning up); 1 anything else, a run that
did not finish included (its results are written and marked partial).
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Run offloaders over an emulated network and report latency and accuracy."
    )
    parser.add_argument("scenario", nargs="?", type=Path, help="scenario YAML file")
    parser.add_argument("--out", type=Path, help="results folder (default: a new one in results/)")
    parser.add_argument("--samples", type=int, help="override the scenario's `samples`")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--skip-fidelity", action="store_true", help="skip measuring the links before the run"
    )
    parser.add_argument(
        "--capture", action="store_true", help="write capture.pcap and wire bytes per request"
    )
    parser.add_argument(
        "--strict", action="store_true", help="fail when a link is off its configuration"
    )
    parser.add_argument(
        "--loopback",
        action="store_true",
        help="the agents on 127.0.0.1 without Mininet: no root, NO link shaping (docs/edge.md)",
    )
    parser.add_argument(
        "--cleanup-stale",
        action="store_true",
        help="remove what runs killed outright (SIGKILL) left behind, and nothing else",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="check the scenario or sweep and print what would run and a rough duration; "
        "starts nothing, needs no root",
    )
    parser.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="run a sweep's cells on a Ray cluster (HEAD:6379, auto), one per emulation "
        "slot; `local` (or local:N) starts one on this machine for this command",
    )
    parser.add_argument("--list-plugins", action="store_true", help="list model plugins")
    parser.add_argument(
        "--clean-cache",
        action="store_true",
        help="remove the cached data and calibration of plugins no longer installed",
    )
    parser.add_argument("--list-offloaders", action="store_true", help="list offloaders")
    args = parser.parse_args(argv)
    listings = args.list_plugins or args.list_offloaders or args.clean_cache
    if not (args.scenario or listings or args.cleanup_stale):
        parser.error("a scenario file is required")
    if args.check and not args.scenario:
        parser.error("--check needs a scenario file")
    return args


def list_plugins() -> None:
    """Every registered plugin; a broken one is named with its problem, the rest still list."""
    from testbed.errors import TestbedError
    from testbed.models import plugins
    from testbed.models.plugin_api import check_plugin

    for name in plugins.available():
        try:
            p = plugins.get(name)
            shapes = check_plugin(p)
        except TestbedError as exc:
            print(f"{name:16s} BROKEN: {exc}")
            continue
        splits = ", ".join(f"{k} ({'x'.join(map(str, shapes[k - 1]))})" for k in p.split_points)
        print(f"{name:16s} input {p.input_spec.describe()}; {p.metric}; {p.description}")
        print(f"{'':16s} split points (feature shape): {splits or 'none'}")
        for note in artefact_notes(p):
            print(f"{'':16s} {note}")


def artefact_notes(plugin) -> list[str]:
    """What `--list-plugins` says of a plugin's trained files: missing weights (it cannot
    run), missing DeepCOD networks (`deepcod` cannot run with it), the networks present."""
    from testbed.models import plugins
    from testbed.offloaders.deepcod.artefacts import command

    notes = []
    missing = plugins.weights_missing(plugin)
    if missing:
        notes.append(f"MISSING weights: {missing}")
    trained = plugins.trained_artefacts(plugin)
    if not any(key.startswith("deepcod-") for key in trained):
        notes.append(f"MISSING DeepCOD networks: train them with: {command(plugin.name, 0.1)}")
    if trained:
        notes.append(f"trained networks: {', '.join(trained)}")
    return notes


def list_offloaders() -> None:
    from testbed import offloaders

    for name in offloaders.names():
        cls = offloaders.get(name)
        params = ", ".join(f"{k}={v.default!r} ({v.allowed})" for k, v in cls.params.items())
        print(f"{name:14s} {cls.description}" + (f"; params: {params}" if params else ""))


def clean_cache() -> None:
    """`--clean-cache`: what uninstalled plugins left in the cache, removed and named."""
    from testbed.models import cache, cache_clean

    found = cache_clean.orphans()
    cache_clean.remove(found)
    for path in found:
        print(f"removed {path}")
    print(f"{cache.cache_dir()}: removed {len(found)} entries of plugins no longer installed")


def cleanup_stale() -> None:
    import os

    from testbed.emulation import stale
    from testbed.errors import EnvironmentMissing

    if os.geteuid() != 0:
        raise EnvironmentMissing("--cleanup-stale needs root, as the runs did")
    removed = stale.clean_all()
    for prefix, items in removed.items():
        print(f"stale run {prefix}: removed {len(items)} items: {', '.join(items) or 'none'}")
    if not removed:
        print("no stale runs")


def check(sweeps, fidelity: bool, loopback: bool = False) -> int:
    """`--check`: every cell checked as a run would, what would run, a rough duration."""
    import os

    from testbed.experiment import dry_run

    plans = dry_run.check(sweeps, fidelity=fidelity)
    print(dry_run.describe(sweeps, plans))
    if loopback:
        print("note: with --loopback the run needs no root and shapes no link", file=sys.stderr)
    elif os.geteuid() != 0:
        print("note: the run itself needs root (Mininet); this check did not", file=sys.stderr)
    return 0


def _run_one(sweep, out: Path, options: dict) -> tuple[list[str], list[str], Path | None]:
    """One document: a plain run, or a sweep of runs. Returns (gate failures, failed
    runs, the report's path); a plain run that did not finish is a failed run, its
    table and report written and marked partial."""
    from testbed.experiment import runner
    from testbed.experiment.sweep import SWEEP_TABLE_TITLE, run_sweep, sweep_table
    from testbed.results.records import table

    if not sweep.is_grid:
        result = runner.run(sweep.cells[0].scenario, out, **options)
        print(table(result.summary))
        failed = [f"the run did not finish: {result.partial}"] if result.partial else []
        return result.gate_failures, failed, _report(out)
    print(
        f"{sweep.name}: {len(sweep.cells)} runs into {out} (after an interruption, the "
        f"same command with --out {out} resumes)",
        file=sys.stderr,
    )
    try:
        result = run_sweep(sweep, out, **options)
    except KeyboardInterrupt:
        print(f"resume with: --out {out}", file=sys.stderr)
        raise
    print(f"{sweep.name}: {SWEEP_TABLE_TITLE}")
    print(sweep_table(out))
    return result.gate_failures, result.failed_cells, _report(out)


def _write_index(out: Path, source: Path, reports: list) -> None:
    """OUT/report.md for a file of several documents: one link per document's report."""
    lines = [f"# {source.name}", "", f"Scenario file: `{source}`; one report per document:", ""]
    for name, path in reports:
        lines.append(f"- [{name}]({name}/report.md)" if path else f"- {name}: no report")
    (out / "report.md").write_text("\n".join(lines) + "\n")


def _report(out: Path) -> Path | None:
    """report.md and its plots; a failure to plot never loses the measured results."""
    try:
        from testbed.results import report

        return report.write_report(out)
    except Exception as exc:  # the CSVs are written: say what went wrong, keep them
        print(
            f"warning: the report could not be written: {type(exc).__name__}: {exc}",
            file=sys.stderr,
        )
        return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from testbed.cleanup import Terminated, honour_sigint
    from testbed.errors import GateFailed, ScenarioError, TestbedError

    honour_sigint()
    cluster = None
    try:
        if args.list_plugins:
            list_plugins()
        if args.list_offloaders:
            list_offloaders()
        if args.cleanup_stale:
            cleanup_stale()
        if args.clean_cache:
            clean_cache()
        if not args.scenario:
            return 0
        from testbed.config.sweep import load_sweeps

        sweeps = load_sweeps(args.scenario)
        if args.samples is not None:
            if args.samples < 1:
                raise ScenarioError(f"--samples: got {args.samples}; allowed: an integer >= 1")
            sweeps = [s.with_samples(args.samples) for s in sweeps]
        if args.check:
            return check(sweeps, fidelity=not args.skip_fidelity, loopback=args.loopback)
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        name = sweeps[0].name if len(sweeps) == 1 else args.scenario.stem
        out = args.out or Path("results") / f"{name}-{stamp}"
        options = {
            "progress": not args.no_progress,
            "fidelity": not args.skip_fidelity,
            "strict": args.strict,
            "capture": args.capture,
            "loopback": args.loopback,
        }
        if args.ray:  # connected (or started) once for every document
            from testbed.experiment.cluster import Cluster

            single = [s.name for s in sweeps if not s.is_grid]
            if single:
                raise ScenarioError(f"--ray runs sweeps; {single[0]} is a single run: drop --ray")

            cluster = options["cluster"] = Cluster(args.ray).__enter__()
        failures, failed_runs, reports = [], [], []
        for sweep in sweeps:  # a file of several documents: OUT/<name>/ each
            where = out / sweep.name if len(sweeps) > 1 else out
            gates, failed, report_path = _run_one(sweep, where, options)
            tag = f"{sweep.name}: " if len(sweeps) > 1 else ""
            failures += [tag + g for g in gates]
            failed_runs += [tag + f for f in failed]
            reports.append((sweep.name, report_path))
        if len(sweeps) > 1:
            _write_index(out, args.scenario, reports)
        print(
            f"results: {out}"
            + (f"; report: {reports[0][1]}" if len(reports) == 1 and reports[0][1] else "")
        )
        if len(failed_runs) == 1 and not any(s.is_grid for s in sweeps):
            raise TestbedError(f"{failed_runs[0]} (results so far in {out}, marked partial)")
        if failed_runs:
            raise TestbedError(
                f"{len(failed_runs)} runs failed (the same command with --out {out} retries "
                "them):\n  " + "\n  ".join(failed_runs)
            )
        if failures:
            raise GateFailed("expect gates failed:\n  " + "\n  ".join(failures))
        return 0
    except TestbedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        print("interrupted: cleaned up", file=sys.stderr)
        return 130
    except Terminated:
        print("terminated: cleaned up", file=sys.stderr)
        return 143
    finally:
        if cluster is not None:  # `--ray local`: the cluster it started, stopped
            cluster.__exit__(None, None, None)


if __name__ == "__main__":
    sys.exit(main())
