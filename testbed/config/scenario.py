"""Scenario files: load, validate against a small declarative schema, resolve defaults.

`load_scenario(path)` reads a YAML scenario (docs/scenarios.md is the reference) and
returns a frozen `Scenario` with every default filled in, or raises `ScenarioError`
with a one- or two-line message: the file (and line, where known), the key path, the
value given and what is allowed. Nothing here starts processes or touches the network.

The schema is a table: each mapping is a `_Record` of `_Field`s, and each field has a
check (`_Num`, `_Int`, `_Choice`, ...) that both validates a value and returns its
resolved form. The few rules that span several keys live in `post` hooks.
"""

from __future__ import annotations

import copy
import difflib
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from testbed import offloaders as offloader_registry
from testbed.errors import ScenarioError
from testbed.models import plugins as plugin_registry

MAX_CPU = float(os.cpu_count() or 1)  # cpu shares are of ONE core; at most every core
MAX_DEVICES = 32  # device hosts on one switch (addresses 10.0.0.20 + i)

# Keys the schema accepts but this version cannot honour yet: key path -> why.
# The runner should refuse a scenario that uses one (see `unsupported`); remove an
# entry when its feature lands, and keep docs/scenarios.md in step.
NOT_YET_SUPPORTED: dict[str, str] = {}


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class LinkSpec:
    """One direction of the device-edge link. `bandwidth_mbps` is None when a trace
    (`NetworkSpec.trace`) sets the rate instead; exactly one of `queue_packets` and
    `queue_bytes` is set."""

    bandwidth_mbps: float | None
    delay_ms: float = 0
    jitter_ms: float = 0
    loss_pct: float = 0
    queue_packets: int | None = 100
    jitter_distribution: str = "normal"
    loss_model: str = "random"
    loss_burst_packets: float = 1.0
    queue_bytes: int | None = None


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
    repeats: int = (
        1  # runs of a sweep cell, seeds seed, seed + 1, ... (see testbed.experiment.sweep)
    )
    test_data: Path | None = None  # a folder of images replacing the plugin's test set
    max_drop_pp: float = 1.0  # the accuracy bound of the comparisons (points)

    def to_dict(self) -> dict:
        """The resolved scenario as plain YAML-safe data, in the input file's layout;
        `parse_scenario(s.to_dict(), ...)` gives a Scenario equal to `s`."""
        network: dict[str, Any] = {
            "uplink": _link_dict(self.network.uplink),
            "downlink": _link_dict(self.network.downlink),
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
            "devices": self.devices,
            "repeats": self.repeats,
            "device": {"cpu": self.device.cpu},
            "edge": {"cpu": self.edge.cpu},
            "network": network,
            "traffic": [dict(t) for t in self.traffic],
            "offloaders": [
                {"name": o.name, **copy.deepcopy(o.params)} if o.params else o.name
                for o in self.offloaders
            ],
            "expect": list(self.expect),
        }


def _link_dict(link: LinkSpec) -> dict:
    out = {
        "bandwidth_mbps": link.bandwidth_mbps,
        "delay_ms": link.delay_ms,
        "jitter_ms": link.jitter_ms,
        "jitter_distribution": link.jitter_distribution,
        "loss_pct": link.loss_pct,
        "loss_model": link.loss_model,
        "loss_burst_packets": link.loss_burst_packets,
        "queue_packets": link.queue_packets,
        "queue_bytes": link.queue_bytes,
    }
    # keys that must be absent rather than null: the trace sets the rate; one queue limit
    return {k: v for k, v in out.items() if v is not None}


def unsupported(scenario: Scenario) -> list[str]:
    """The settings of `scenario` this version accepts but cannot honour yet, as
    'key path: reason' lines (empty when everything is supported)."""
    found: list[str] = []  # one check per NOT_YET_SUPPORTED entry (none at present)
    return found


# ---------------------------------------------------------------------------- errors


class _Invalid(Exception):
    """A problem at a key path; `load_scenario` adds the file name and line."""

    def __init__(self, at: str, problem: str, hint: str = "") -> None:
        super().__init__(at, problem, hint)
        self.at, self.problem, self.hint = at, problem, hint


def _show(value: Any) -> str:
    """A value as the user wrote it (YAML words for booleans and null), kept short."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        try:
            text = yaml.safe_dump(
                value, default_flow_style=True, sort_keys=False, width=1_000_000
            ).strip()
        except yaml.YAMLError:
            text = repr(value)
    else:
        text = repr(value)
    text = " ".join(text.split())
    return text if len(text) <= 80 else text[:77] + "..."


def _bad(at: str, value: Any, allowed: str, hint: str = "") -> _Invalid:
    return _Invalid(at, f"got {_show(value)}; allowed: {allowed}", hint)


def _did_you_mean(word: Any, choices: list[str]) -> str:
    close = difflib.get_close_matches(str(word), choices, n=1)
    return f"did you mean {close[0]!r}?" if close else ""


def _join(at: str, key: Any) -> str:
    return f"{at}.{key}" if at else str(key)


# ---------------------------------------------------------------------------- checks
# A check is called as check(value, at, ctx) and returns the resolved value or raises
# _Invalid. `allowed` says in words what it accepts.


@dataclass(frozen=True)
class _Ctx:
    source: Path  # the scenario file, as the user named it


def _number_hint(value: Any) -> str:
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return ""
        if re.fullmatch(r"\s*[-+]?\d+[eE][-+]?\d+\s*", value):
            return "YAML reads 1e3 as text; write 1.0e3"
        return "write the number without quotes"
    return ""


@dataclass(frozen=True)
class _Num:
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    noun = "a number"

    @property
    def allowed(self) -> str:
        bounds = [
            f"{op} {_fmt(b)}"
            for op, b in ((">", self.gt), (">=", self.ge), ("<", self.lt), ("<=", self.le))
            if b is not None
        ]
        return self.noun + (" " + " and ".join(bounds) if bounds else "")

    def _typed(self, value: Any) -> bool:
        return isinstance(value, int | float) and math.isfinite(value)

    def __call__(self, value: Any, at: str, ctx: _Ctx) -> Any:
        if isinstance(value, bool) or not self._typed(value):
            raise _bad(at, value, self.allowed, _number_hint(value))
        if (
            (self.gt is not None and not value > self.gt)
            or (self.ge is not None and not value >= self.ge)
            or (self.lt is not None and not value < self.lt)
            or (self.le is not None and not value <= self.le)
        ):
            raise _bad(at, value, self.allowed)
        return self._resolve(value)

    def _resolve(self, value: Any) -> Any:
        return float(value)


@dataclass(frozen=True)
class _Int(_Num):
    noun = "an integer"

    def _typed(self, value: Any) -> bool:
        return isinstance(value, int)

    def _resolve(self, value: Any) -> Any:
        return int(value)


def _fmt(bound: float) -> str:
    return f"{bound:g}" if isinstance(bound, float) else str(bound)


@dataclass(frozen=True)
class _Str:
    allowed = "a non-empty string"

    def __call__(self, value: Any, at: str, ctx: _Ctx) -> Any:
        if not isinstance(value, str) or not value.strip():
            raise _bad(at, value, self.allowed)
        return value


class _Choice:
    def __init__(self, *options: str) -> None:
        self.options = options
        self.allowed = "one of " + ", ".join(options)

    def __call__(self, value: Any, at: str, ctx: _Ctx) -> Any:
        if not isinstance(value, str) or value not in self.options:
            raise _bad(at, value, self.allowed, _did_you_mean(value, list(self.options)))
        return value


@dataclass(frozen=True)
class _Nullable:
    inner: Any

    @property
    def allowed(self) -> str:
        return f"{self.inner.allowed}, or null"

    def __call__(self, value: Any, at: str, ctx: _Ctx) -> Any:
        if value is None:
            return None
        try:
            return self.inner(value, at, ctx)
        except _Invalid as err:
            if err.at != at:  # a problem inside the value: report it as it is
                raise
            raise _bad(at, value, self.allowed, err.hint) from None


@dataclass(frozen=True)
class _ListOf:
    item: Any
    allowed: str

    def __call__(self, value: Any, at: str, ctx: _Ctx) -> Any:
        if not isinstance(value, list):
            raise _bad(at, value, self.allowed)
        return tuple(self.item(v, f"{at}[{i}]", ctx) for i, v in enumerate(value))


class _File:
    """A path to an existing file (or, `folder=True`, folder), relative to the scenario
    file's folder."""

    def __init__(self, folder: bool = False) -> None:
        self.folder = folder
        self.kind = "folder" if folder else "file"
        self.allowed = f"a path to an existing {self.kind} (relative to the scenario file's folder)"

    def __call__(self, value: Any, at: str, ctx: _Ctx) -> Any:
        if not isinstance(value, str) or not value.strip():
            raise _bad(at, value, self.allowed)
        path = Path(value).expanduser()
        if not path.is_absolute():
            path = ctx.source.parent / path
        path = path.resolve()
        if not (path.is_dir() if self.folder else path.is_file()):
            what = "does not exist"
            if path.exists():
                what = "is a file" if self.folder else "is a directory"
            raise _Invalid(at, f"got {value!r}: {path} {what}; allowed: {self.allowed}")
        return path


_REQUIRED = object()  # a field without a default
_OMIT = object()  # an optional field left out of the result when absent


@dataclass(frozen=True)
class _Field:
    check: Any
    default: Any = _REQUIRED  # raw input value, or callable(ctx) giving one; run through check


class _Record:
    """A mapping with a fixed set of keys; `post(out, at, ctx)` applies cross-key rules
    and may turn the dict into a dataclass."""

    def __init__(
        self,
        fields: dict[str, _Field],
        post: Callable[[dict, str, _Ctx], Any] | None = None,
        what: str = "",
    ) -> None:
        self.fields, self.post, self.what = fields, post, what
        self.allowed = "a mapping with keys " + ", ".join(fields)

    def __call__(self, value: Any, at: str, ctx: _Ctx) -> Any:
        if not isinstance(value, dict):
            raise _bad(at, value, self.allowed)
        keys = list(self.fields)
        for key in value:
            if key not in self.fields:
                where = f" {self.what}" if self.what else ""
                raise _Invalid(
                    _join(at, key),
                    f"unknown key{where}; allowed: {', '.join(keys)}",
                    _did_you_mean(key, keys),
                )
        out: dict[str, Any] = {}
        for key, spec in self.fields.items():
            here = _join(at, key)
            if key in value:
                out[key] = spec.check(value[key], here, ctx)
            elif spec.default is _REQUIRED:
                raise _Invalid(here, f"missing; required: {spec.check.allowed}")
            elif spec.default is not _OMIT:
                default = spec.default(ctx) if callable(spec.default) else spec.default
                out[key] = spec.check(copy.deepcopy(default), here, ctx)
        return self.post(out, at, ctx) if self.post else out


class _Tagged:
    """A mapping whose `tag` key picks the record for the rest (`type: udp_cbr`)."""

    def __init__(
        self,
        tag: str,
        variants: dict[str, dict[str, _Field]],
        what: str,
        post: Callable[[dict, str, _Ctx], Any] | None = None,
    ) -> None:
        self.tag = tag
        self.choice = _Choice(*variants)
        self.records = {
            name: _Record(
                {tag: _Field(self.choice), **fields},
                post=post,
                what=f"for {what} {tag} {name!r}",
            )
            for name, fields in variants.items()
        }
        self.allowed = f"a mapping with {tag}: {' | '.join(variants)} and its keys"

    def __call__(self, value: Any, at: str, ctx: _Ctx) -> Any:
        if not isinstance(value, dict):
            raise _bad(at, value, self.allowed)
        if self.tag not in value:
            raise _Invalid(_join(at, self.tag), f"missing; required: {self.choice.allowed}")
        kind = self.choice(value[self.tag], _join(at, self.tag), ctx)
        return self.records[kind](value, at, ctx)


def _check_start_stop(out: dict, at: str, ctx: _Ctx) -> dict:
    stop, start = out.get("stop_s"), out.get("start_s")
    if stop is not None and start is not None and not stop > start:
        raise _bad(
            _join(at, "stop_s"), stop, f"a number > start_s ({start:g}), or null (until the end)"
        )
    return out


# ------------------------------------------------------------- checks for one place


class _Model:
    @property
    def allowed(self) -> str:
        names = plugin_registry.available()
        return "one of " + ", ".join(names) if names else "a plugin name (none is registered)"

    def __call__(self, value: Any, at: str, ctx: _Ctx) -> Any:
        names = plugin_registry.available()
        if not isinstance(value, str) or value not in names:
            raise _bad(at, value, self.allowed, _did_you_mean(value, names))
        return value


class _Arrival:
    """`closed`, or {process: closed} / {process: poisson, rate_hz: R}."""

    allowed = "closed, or a mapping {process: poisson, rate_hz: NUMBER > 0}"

    def __init__(self) -> None:
        self.tagged = _Tagged(
            "process",
            {"closed": {}, "poisson": {"rate_hz": _Field(_Num(gt=0))}},
            "arrival",
        )

    def __call__(self, value: Any, at: str, ctx: _Ctx) -> Any:
        if isinstance(value, str):
            if value != "closed":
                hint = "write {process: poisson, rate_hz: R}" if value == "poisson" else ""
                raise _bad(at, value, self.allowed, hint or _did_you_mean(value, ["closed"]))
            return {"process": "closed"}
        if not isinstance(value, dict):
            raise _bad(at, value, self.allowed)
        return self.tagged(value, at, ctx)


class _Offloaders:
    allowed = "a non-empty list of offloader names or mappings {name: NAME, PARAM: VALUE}"

    def __call__(self, value: Any, at: str, ctx: _Ctx) -> Any:
        if not isinstance(value, list) or not value:
            raise _bad(at, value, f"{self.allowed}; registered: {self._names()}")
        specs: list[OffloaderSpec] = []
        seen: dict[tuple[str, str], int] = {}
        for i, item in enumerate(value):
            here = f"{at}[{i}]"
            spec = self._one(item, here)
            key = (spec.name, repr(sorted(spec.params.items())))
            if key in seen:
                raise _Invalid(
                    here,
                    f"got {_show(item)}, the same offloader and parameters as {at}[{seen[key]}]; "
                    "allowed: each configuration once",
                )
            seen[key] = i
            specs.append(spec)
        return tuple(specs)

    def _names(self) -> str:
        return ", ".join(offloader_registry.names())

    def _one(self, item: Any, here: str) -> OffloaderSpec:
        if isinstance(item, str):
            name, given, name_at = item, {}, here
        elif isinstance(item, dict):
            if "name" not in item:
                raise _Invalid(_join(here, "name"), f"missing; required: one of {self._names()}")
            name, name_at = item["name"], _join(here, "name")
            given = {k: v for k, v in item.items() if k != "name"}
        else:
            raise _bad(here, item, "an offloader name or a mapping {name: NAME, PARAM: VALUE}")
        names = offloader_registry.names()
        if not isinstance(name, str) or name not in names:
            raise _bad(name_at, name, f"one of {', '.join(names)}", _did_you_mean(name, names))
        params = list(offloader_registry.get(name).params)
        for key in given:
            if key not in params:
                allowed = ", ".join(["name", *params])
                raise _Invalid(
                    _join(here, key),
                    f"unknown parameter of offloader {name!r}; allowed: {allowed}",
                    _did_you_mean(key, params),
                )
        try:
            resolved = offloader_registry.validate_params(name, given)
        except ValueError as exc:
            arg = exc.args[0] if exc.args else None
            if isinstance(arg, tuple) and len(arg) == 2:
                raise _Invalid(_join(here, arg[0]), str(arg[1])) from None
            raise _Invalid(here, str(exc)) from None
        return OffloaderSpec(name, resolved)


# ---------------------------------------------------------------------------- schema


def _host(out: dict, at: str, ctx: _Ctx) -> HostSpec:
    return HostSpec(**out)


def _network(out: dict, at: str, ctx: _Ctx) -> NetworkSpec:
    if "downlink" not in out:
        out["downlink"] = dict(out["uplink"])
    trace = out.get("trace")
    for direction in ("uplink", "downlink"):
        link = out[direction]
        here = f"{at}.{direction}.bandwidth_mbps"
        if trace is None and "bandwidth_mbps" not in link:
            raise _Invalid(
                here, f"missing; required (unless {at}.trace is given): {_BANDWIDTH.allowed}"
            )
        if trace is not None and "bandwidth_mbps" in link:
            raise _bad(here, link["bandwidth_mbps"], f"no bandwidth_mbps with {at}.trace")
        if "queue_bytes" in link and "queue_packets" in link:
            raise _bad(
                f"{at}.{direction}.queue_bytes",
                link["queue_bytes"],
                "either queue_packets or queue_bytes, not both",
            )
        if "queue_bytes" not in link:
            link.setdefault("queue_packets", 100)
        out[direction] = LinkSpec(**{"bandwidth_mbps": None, **link})
    return NetworkSpec(
        uplink=out["uplink"],
        downlink=out["downlink"],
        trace=trace,
        backend=out["backend"],
        congestion_control=out["congestion_control"],
    )


_BANDWIDTH = _Num(gt=0, le=10000)
_LINK = _Record(
    {
        "bandwidth_mbps": _Field(_BANDWIDTH, _OMIT),
        "delay_ms": _Field(_Num(ge=0, le=10000), 0),
        "jitter_ms": _Field(_Num(ge=0, le=10000), 0),
        "jitter_distribution": _Field(_Choice("normal", "uniform", "pareto"), "normal"),
        "loss_pct": _Field(_Num(ge=0, lt=100), 0),
        "loss_model": _Field(_Choice("random", "gilbert_elliott"), "random"),
        "loss_burst_packets": _Field(_Num(ge=1, le=1000), 1.0),
        "queue_packets": _Field(_Int(ge=1, le=100000), _OMIT),  # default 100, see _network
        "queue_bytes": _Field(_Int(ge=1500, le=100_000_000), _OMIT),
    }
)
_HOST = _Record({"cpu": _Field(_Num(gt=0, le=MAX_CPU), 1.0)}, post=_host)
_WINDOW = {
    "direction": _Field(_Choice("up", "down"), "up"),
    "start_s": _Field(_Num(ge=0), 0),
    "stop_s": _Field(_Nullable(_Num(ge=0)), None),
}
_TRAFFIC = _Tagged(
    "type",
    {
        "tcp_bulk": {"flows": _Field(_Int(ge=1), 1), **_WINDOW},
        "udp_cbr": {"rate_mbps": _Field(_Num(gt=0)), **_WINDOW},
        "udp_onoff": {
            "rate_mbps": _Field(_Num(gt=0)),
            "on_s": _Field(_Num(gt=0)),
            "off_s": _Field(_Num(gt=0)),
            "distribution": _Field(_Choice("exponential", "pareto"), "exponential"),
            **_WINDOW,
        },
        "poisson": {
            "rate_hz": _Field(_Num(gt=0)),
            "train_packets": _Field(_Int(ge=1), 10),
            "packet_bytes": _Field(_Int(ge=64, le=1500), 1000),
            **_WINDOW,
        },
    },
    "traffic",
    post=_check_start_stop,
)
_TOP = _Record(
    {
        "name": _Field(_Str(), lambda ctx: ctx.source.stem),
        "seed": _Field(_Int(ge=0, le=2**32 - 1), 1),
        "model": _Field(_Model()),
        "samples": _Field(_Int(ge=1, le=100000), 100),
        # a folder of images replacing an image plugin's test set (testbed.models.image_folder)
        "test_data": _Field(_File(folder=True), _OMIT),
        # the accuracy bound of the report's comparisons: an offloader's configuration
        # counts only within this many points of the unmodified model
        "max_drop_pp": _Field(_Num(ge=0, le=100), 1.0),
        "arrival": _Field(_Arrival(), "closed"),
        "request_timeout_s": _Field(_Num(gt=0), 30),
        "devices": _Field(_Int(ge=1, le=MAX_DEVICES), 1),
        "repeats": _Field(_Int(ge=1, le=1000), 1),
        "device": _Field(_HOST, {}),
        "edge": _Field(_HOST, {}),
        "network": _Field(
            _Record(
                {
                    "uplink": _Field(_LINK),
                    "downlink": _Field(_LINK, _OMIT),  # default: a copy of uplink
                    "trace": _Field(
                        _Nullable(
                            _Record({"uplink": _Field(_File()), "downlink": _Field(_File())})
                        ),
                        None,
                    ),
                    "backend": _Field(_Choice("auto", "netem", "userspace"), "auto"),
                    "congestion_control": _Field(_Choice("cubic", "bbr", "reno"), "cubic"),
                },
                post=_network,
            )
        ),
        "traffic": _Field(
            _ListOf(
                _TRAFFIC, "a list of mappings, each with type: " + " | ".join(_TRAFFIC.records)
            ),
            [],
        ),
        "offloaders": _Field(_Offloaders(), ["local", "raw"]),
        "expect": _Field(_ListOf(_Str(), "a list of non-empty strings"), []),
    }
)


def _key_paths(check: Any = _TOP, at: str = "") -> list[str]:
    """Every key path the schema knows (for the reference documentation's tests)."""
    if isinstance(check, _Nullable):
        check = check.inner
    if isinstance(check, _ListOf):
        return _key_paths(check.item, f"{at}[]")
    if isinstance(check, _Arrival):
        check = check.tagged
    if isinstance(check, _Tagged):
        return sorted({p for r in check.records.values() for p in _key_paths(r, at)})
    if isinstance(check, _Record):
        out = []
        for key, spec in check.fields.items():
            out.append(_join(at, key))
            out += _key_paths(spec.check, _join(at, key))
        return out
    return []


# ---------------------------------------------------------------------------- YAML


class _Loader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys and records each key path's line."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.lines: dict[str, int] = {}

    def construct_document(self, node: yaml.Node) -> Any:
        self._walk(node, "", set())
        return super().construct_document(node)

    def _walk(self, node: yaml.Node, at: str, seen: set[int]) -> None:
        if id(node) in seen:  # an alias of a node already walked
            return
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[tuple[str, str], int] = {}
            for key, value in node.value:
                if key.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden
                    self._walk(value, at, seen)
                    continue
                text = key.value if isinstance(key, yaml.ScalarNode) else "?"
                here, line = _join(at, text), key.start_mark.line + 1
                ident = (key.tag, str(key.value))
                if ident in first:
                    self.lines[here] = line
                    raise _Invalid(
                        here,
                        f"duplicate key (first at line {first[ident]}); "
                        "allowed: each key once in a mapping",
                    )
                first[ident] = line
                self.lines.setdefault(here, line)
                self._walk(value, here, seen)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                here = f"{at}[{i}]"
                self.lines.setdefault(here, item.start_mark.line + 1)
                self._walk(item, here, seen)


def _line(at: str, lines: dict[str, int]) -> int | None:
    """The line of key path `at`, or of its nearest ancestor that has one."""
    while at:
        if at in lines:
            return lines[at]
        parent = re.sub(r"(\.[^.\[\]]*|\[\d+\])$", "", at)
        if parent == at:
            return None
        at = parent
    return None


def _message(source: Path, err: _Invalid, lines: dict[str, int]) -> str:
    line = _line(err.at, lines)
    where = f"{source}:{line}" if line else f"{source}"
    return f"{where}: {err.at}: {err.problem}" + (f"\n  {err.hint}" if err.hint else "")


def load_scenario(path: str | Path) -> Scenario:
    """Read, validate and resolve a scenario file. Raises ScenarioError."""
    data, lines = read_yaml(path)
    return _parse(data, Path(path), lines)


def read_yaml(path: str | Path) -> tuple[Any, dict[str, int]]:
    """The file's data and the line of each key path, or ScenarioError for a file that
    cannot be read or is not YAML (checked before any schema)."""
    documents = read_yaml_documents(path)
    if len(documents) > 1:
        raise ScenarioError(
            f"{path}: {len(documents)} YAML documents (`---`); allowed here: one scenario "
            "(run_scenario.py runs files of several)"
        )
    return documents[0]


def read_yaml_documents(path: str | Path) -> list[tuple[Any, dict[str, int]]]:
    """Each `---` document's data and key lines (a file may hold several scenarios)."""
    source = Path(path)
    try:
        raw = source.read_bytes()
    except FileNotFoundError:
        raise ScenarioError(f"{source}: no such scenario file") from None
    except IsADirectoryError:
        raise ScenarioError(f"{source}: is a directory, not a scenario file") from None
    except OSError as exc:
        raise ScenarioError(f"{source}: cannot read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ScenarioError(
            f"{source}:{line}: not UTF-8 text (byte {raw[exc.start]:#04x} at offset {exc.start});"
            " save the scenario as UTF-8"
        ) from None
    loader = _Loader(text)
    documents = []
    try:
        while loader.check_data():
            documents.append((loader.get_data(), loader.lines))
            loader.lines = {}  # key paths restart in the next document
    except _Invalid as err:
        raise ScenarioError(_message(source, err, loader.lines)) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else f"{source}"
        words = [w for w in (exc.context, exc.problem) if w] or ["unreadable"]
        problem = " ".join("; ".join(str(w) for w in words).split())
        raise ScenarioError(f"{where}: invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{source}: invalid YAML: {' '.join(str(exc).split())}") from None
    finally:
        loader.dispose()
    if not documents or all(data is None for data, _ in documents):
        raise ScenarioError(
            f"{source}: the file is empty; a scenario needs at least `model:` and `network:`"
        )
    for i, (data, _) in enumerate(documents):
        if data is None:
            raise ScenarioError(f"{source}: document {i + 1} (after a `---`) is empty")
    return documents


def parse_scenario(data: object, source: Path, lines: dict[str, int] | None = None) -> Scenario:
    """Validate and resolve already-loaded scenario data; `source` is the file it came
    from (relative paths in it are relative to its folder), `lines` the line of each key
    path (from `read_yaml`) for the messages. Raises ScenarioError."""
    return _parse(data, Path(source), lines or {})


def _parse(data: object, source: Path, lines: dict[str, int]) -> Scenario:
    if not isinstance(data, dict):
        raise ScenarioError(
            f"{source}: top level: got {_show(data)}; allowed: a mapping with keys "
            + ", ".join(_TOP.fields)
        )
    try:
        out = _TOP(data, "", _Ctx(source))
    except _Invalid as err:
        raise ScenarioError(_message(source, err, lines)) from None
    return Scenario(**out, source=source.absolute())
