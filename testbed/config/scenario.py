"""Scenarios: what one run is asked to do, and how a file becomes one.

`load_scenario(path)` reads a YAML scenario (docs/scenarios.md is the reference) and
returns a frozen `Scenario` with every default filled in, or raises `ScenarioError`
with a one- or two-line message: the file (and line, where known), the key path, the
value given and what is allowed. The file is read by yaml_source.py, checked and
resolved by schema.py; this module holds the result's types. Nothing here starts
processes or touches the network.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed.config.schema import TOP
from testbed.config.validation import Context, Invalid, show
from testbed.config.yaml_source import located, read_yaml
from testbed.emulation.link.settings import LinkSpec
from testbed.errors import ScenarioError

__all__ = [
    "HostSpec",
    "LinkSpec",
    "NetworkSpec",
    "OffloaderSpec",
    "Scenario",
    "load_scenario",
    "parse_scenario",
]


@dataclass(frozen=True)
class NetworkSpec:
    uplink: LinkSpec
    downlink: LinkSpec
    trace: dict[str, Path] | None = None  # {"uplink": Path, "downlink": Path}, absolute
    backend: str = "auto"  # auto | netem | userspace
    congestion_control: str = "cubic"


@dataclass(frozen=True)
class HostSpec:
    cpu: float  # share of ONE core: 0.2 is a fifth of a core, 2.0 two cores
    cpu_mode: str = "cfs"  # the device's is a scenario key (schema.CPU_MODES); the edge's cfs
    # the edge's is a scenario key (schema.EDGE_DEVICES, docs/edge.md); the device's the CPU
    device: str = "cpu"


@dataclass(frozen=True)
class OffloaderSpec:
    name: str
    params: dict  # every parameter of the offloader, defaults filled in


@dataclass(frozen=True)
class Scenario:
    name: str
    seed: int
    model: str
    samples: int
    arrival: dict  # {"process": "closed"} or {"process": "poisson", "rate_hz": R}
    device: HostSpec
    edge: HostSpec
    network: NetworkSpec
    traffic: tuple[dict, ...]  # each with "type" and all its keys, defaults filled in
    offloaders: tuple[OffloaderSpec, ...]
    expect: tuple[str, ...]
    request_timeout_s: float
    # The file it came from (absolute). Not part of equality: a scenario saved with
    # `to_dict` and loaded from elsewhere is the same scenario.
    source: Path = field(compare=False)
    devices: int = 1  # device hosts sharing the edge and the bottleneck
    repeats: int = 1  # runs of a sweep cell, seeds seed, seed + 1, ... (testbed.config.sweep)
    test_data: Path | None = None  # a folder of images replacing the plugin's test set
    max_drop_pp: float = 1.0  # the accuracy bound of the comparisons (points)
    # above it (ms) a request is flagged stalled: "auto" (10 x its offloader's median, at
    # least 1000 ms), a number, or None (off)
    stall_ms: float | str | None = "auto"

    def to_dict(self) -> dict:
        """The resolved scenario as plain YAML-safe data, in the input file's layout;
        `parse_scenario(s.to_dict(), ...)` gives a Scenario equal to `s`."""
        network: dict[str, Any] = {
            "uplink": self.network.uplink.to_dict(),
            "downlink": self.network.downlink.to_dict(),
        }
        if self.network.trace is not None:
            network["trace"] = {k: str(v) for k, v in self.network.trace.items()}
        network["backend"] = self.network.backend
        network["congestion_control"] = self.network.congestion_control
        return {
            "name": self.name,
            "seed": self.seed,
            "model": self.model,
            "samples": self.samples,
            **({} if self.test_data is None else {"test_data": str(self.test_data)}),
            "max_drop_pp": self.max_drop_pp,
            "arrival": dict(self.arrival),
            "request_timeout_s": self.request_timeout_s,
            "stall_ms": self.stall_ms,
            "devices": self.devices,
            "repeats": self.repeats,
            "device": {"cpu": self.device.cpu, "cpu_mode": self.device.cpu_mode},
            # device only where not the default: the scenarios (and sweep cells' digests)
            # of runs made before the key existed stay what they were
            "edge": {"cpu": self.edge.cpu}
            | ({"device": self.edge.device} if self.edge.device != "cpu" else {}),
            "network": network,
            "traffic": [dict(t) for t in self.traffic],
            "offloaders": [
                {"name": o.name, **copy.deepcopy(o.params)} if o.params else o.name
                for o in self.offloaders
            ],
            "expect": list(self.expect),
        }


def load_scenario(path: str | Path) -> Scenario:
    """Read, validate and resolve a scenario file. Raises ScenarioError."""
    data, lines = read_yaml(path)
    return parse_scenario(data, Path(path), lines)


def parse_scenario(data: object, source: Path, lines: dict[str, int] | None = None) -> Scenario:
    """Validate and resolve already-loaded scenario data; `source` is the file it came
    from (relative paths in it are relative to its folder), `lines` the line of each key
    path (from `read_yaml`) for the messages. Raises ScenarioError."""
    source = Path(source)
    if not isinstance(data, dict):
        raise ScenarioError(
            f"{source}: top level: got {show(data)}; allowed: a mapping with keys "
            + ", ".join(TOP.fields)
        )
    try:
        out = TOP(data, "", Context(source))
    except Invalid as err:
        raise ScenarioError(located(source, err, lines or {})) from None
    return _scenario(out, source.absolute())


def _scenario(out: dict, source: Path) -> Scenario:
    """The schema's resolved data as the typed Scenario."""
    net = out["network"]
    network = NetworkSpec(
        uplink=LinkSpec(**net["uplink"]),
        downlink=LinkSpec(**net["downlink"]),
        trace=net["trace"],
        backend=net["backend"],
        congestion_control=net["congestion_control"],
    )
    return Scenario(
        **{
            **out,
            "device": HostSpec(**out["device"]),
            "edge": HostSpec(**out["edge"]),
            "network": network,
            "offloaders": tuple(OffloaderSpec(**o) for o in out["offloaders"]),
        },
        source=source,
    )
