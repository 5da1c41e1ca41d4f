#!/usr/bin/env python3
"""Run a deepcod-testbed scenario: `python run_scenario.py scenarios/lowbw.yaml`.

Exit status: 0 ok; 2 bad input; 3 missing environment; 4 an `expect:` gate failed;
130/143 interrupted (Ctrl-C / SIGTERM, after cleaning up); 1 anything else.
"""

from __future__ import annotations

import argparse
import dataclasses
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
        "--cleanup-stale", action="store_true",
        help="remove what runs killed outright (SIGKILL) left behind, and nothing else",
    )  # fmt: skip
    parser.add_argument("--list-plugins", action="store_true", help="list model plugins")
    parser.add_argument("--list-offloaders", action="store_true", help="list offloaders")
    args = parser.parse_args(argv)
    if not (args.scenario or args.list_plugins or args.list_offloaders or args.cleanup_stale):
        parser.error("a scenario file is required")
    return args


def list_plugins() -> None:
    """Every registered plugin; a broken one is named with its problem, the rest still list."""
    from testbed import plugins
    from testbed.errors import TestbedError
    from testbed.plugin_api import check_plugin

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


def list_offloaders() -> None:
    from testbed import offloaders

    for name in offloaders.names():
        cls = offloaders.get(name)
        params = ", ".join(f"{k}={v.default!r} ({v.allowed})" for k, v in cls.params.items())
        print(f"{name:14s} {cls.description}" + (f"; params: {params}" if params else ""))


def cleanup_stale() -> None:
    import os

    from testbed import stale
    from testbed.errors import EnvironmentMissing

    if os.geteuid() != 0:
        raise EnvironmentMissing("--cleanup-stale needs root, as the runs did")
    removed = stale.clean_all()
    for prefix, items in removed.items():
        print(f"stale run {prefix}: removed {len(items)} items: {', '.join(items) or 'none'}")
    if not removed:
        print("no stale runs")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from testbed.cleanup import Terminated
    from testbed.errors import GateFailed, ScenarioError, TestbedError

    try:
        if args.list_plugins:
            list_plugins()
        if args.list_offloaders:
            list_offloaders()
        if args.cleanup_stale:
            cleanup_stale()
        if not args.scenario:
            return 0
        from testbed import runner
        from testbed.results import table
        from testbed.scenario import load_scenario

        scenario = load_scenario(args.scenario)
        if args.samples is not None:
            if args.samples < 1:
                raise ScenarioError(f"--samples: got {args.samples}; allowed: an integer >= 1")
            scenario = dataclasses.replace(scenario, samples=args.samples)
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = args.out or Path("results") / f"{scenario.name}-{stamp}"
        result = runner.run(
            scenario, out, progress=not args.no_progress, fidelity=not args.skip_fidelity,
            strict=args.strict, capture=args.capture,
        )  # fmt: skip
        print(table(result.summary))
        print(f"results: {out}")
        if result.gate_failures:
            raise GateFailed("expect gates failed:\n  " + "\n  ".join(result.gate_failures))
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


if __name__ == "__main__":
    sys.exit(main())
