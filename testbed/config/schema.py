"""The scenario schema: every key a scenario file may have, what it allows, its default.

`TOP` checks a scenario's data and returns it resolved, as plain data (every default
filled, numbers as floats, paths absolute); testbed.config.scenario turns that into a
`Scenario`. docs/scenarios.md is the reference in words and lists every key here
(`key_paths`). A link's keys are not written here: they are `LinkSpec`'s declared
settings (testbed.emulation.link.settings).
"""

from __future__ import annotations

import os
from dataclasses import MISSING
from typing import Any

from testbed import offloaders as offloader_registry
from testbed.config.validation import (
    OMIT,
    REQUIRED,
    Choice,
    Context,
    Field,
    File,
    Int,
    Invalid,
    ListOf,
    Nullable,
    Num,
    Record,
    Str,
    Tagged,
    bad,
    did_you_mean,
    join,
    show,
)
from testbed.emulation.link.settings import LinkSpec, default_of, settings_of
from testbed.models import plugins as plugin_registry
from testbed.offloaders.base import EDGE_DEVICES

MAX_CPU = float(os.cpu_count() or 1)  # cpu shares are of ONE core; at most every core
MAX_DEVICES = 32  # device hosts on one switch (addresses 10.0.0.20 + i)


# ---------------------------------------------------------------- checks for one place


class Model:
    @property
    def allowed(self) -> str:
        names = plugin_registry.available()
        return "one of " + ", ".join(names) if names else "a plugin name (none is registered)"

    def __call__(self, value: Any, at: str, ctx: Context) -> Any:
        names = plugin_registry.available()
        if not isinstance(value, str) or value not in names:
            raise bad(at, value, self.allowed, did_you_mean(value, names))
        return value


class Arrival:
    """`closed`, or {process: closed} / {process: poisson, rate_hz: R}."""

    allowed = "closed, or a mapping {process: poisson, rate_hz: NUMBER > 0}"

    def __init__(self) -> None:
        self.tagged = Tagged(
            "process",
            {"closed": {}, "poisson": {"rate_hz": Field(Num(gt=0))}},
            "arrival",
        )

    def __call__(self, value: Any, at: str, ctx: Context) -> Any:
        if isinstance(value, str):
            if value != "closed":
                hint = "write {process: poisson, rate_hz: R}" if value == "poisson" else ""
                raise bad(at, value, self.allowed, hint or did_you_mean(value, ["closed"]))
            return {"process": "closed"}
        if not isinstance(value, dict):
            raise bad(at, value, self.allowed)
        return self.tagged(value, at, ctx)


class StallMs:
    """`stall_ms`: `auto` (10 x each offloader's median latency, at least 1 s), a number
    of milliseconds, or null (off): requests slower than it are flagged `stalled`."""

    allowed = "auto, a number of milliseconds > 0, or null (off)"

    def __call__(self, value: Any, at: str, ctx: Context) -> Any:
        if value is None or value == "auto":
            return value
        try:
            return Num(gt=0)(value, at, ctx)
        except Invalid as err:
            hint = did_you_mean(value, ["auto"]) if isinstance(value, str) else err.hint
            raise bad(at, value, self.allowed, hint) from None


class EdgeDeviceChoice(Choice):
    """`edge.device`: cpu, cuda or auto; `gpu` (a common guess) is pointed at cuda."""

    def __init__(self) -> None:
        super().__init__(*EDGE_DEVICES)

    def __call__(self, value: Any, at: str, ctx: Context) -> Any:
        if isinstance(value, str) and value.lower() in ("gpu", "cuda:0", "nvidia"):
            raise bad(at, value, self.allowed, "write cuda for an NVIDIA GPU")
        return super().__call__(value, at, ctx)


class Offloaders:
    """The offloaders to compare: a list of names or {name: NAME, PARAM: VALUE}, each
    resolved to {"name": NAME, "params": every parameter, defaults filled}. The
    parameters are the offloader's to check (`offloaders.validate_params`)."""

    allowed = "a non-empty list of offloader names or mappings {name: NAME, PARAM: VALUE}"

    def __call__(self, value: Any, at: str, ctx: Context) -> Any:
        if not isinstance(value, list) or not value:
            raise bad(at, value, f"{self.allowed}; registered: {self._names()}")
        resolved: list[dict] = []
        seen: dict[tuple[str, str], int] = {}
        for i, item in enumerate(value):
            here = f"{at}[{i}]"
            one = self._one(item, here)
            key = (one["name"], repr(sorted(one["params"].items())))
            if key in seen:
                raise Invalid(
                    here,
                    f"got {show(item)}, the same offloader and parameters as {at}[{seen[key]}]; "
                    "allowed: each configuration once",
                )
            seen[key] = i
            resolved.append(one)
        return tuple(resolved)

    def _names(self) -> str:
        return ", ".join(offloader_registry.names())

    def _one(self, item: Any, here: str) -> dict:
        if isinstance(item, str):
            name, given, name_at = item, {}, here
        elif isinstance(item, dict):
            if "name" not in item:
                raise Invalid(join(here, "name"), f"missing; required: one of {self._names()}")
            name, name_at = item["name"], join(here, "name")
            given = {k: v for k, v in item.items() if k != "name"}
        else:
            raise bad(here, item, "an offloader name or a mapping {name: NAME, PARAM: VALUE}")
        names = offloader_registry.names()
        if not isinstance(name, str) or name not in names:
            raise bad(name_at, name, f"one of {', '.join(names)}", did_you_mean(name, names))
        try:
            params = offloader_registry.validate_params(name, given)
        except offloader_registry.ParamError as err:
            raise _at_param(name, here, err) from None
        return {"name": name, "params": params}


def _at_param(name: str, here: str, err: offloader_registry.ParamError) -> Invalid:
    """A ParamError as the problem at the parameter's key path. A key the offloader
    does not know is one of the mapping `{name: NAME, PARAM: VALUE}`, so the keys it
    allows are `name` and the parameters."""
    if err.param is None:
        return Invalid(here, err.message, err.hint)
    declared = list(offloader_registry.get(name).params)
    message = err.message
    if err.param not in declared:
        allowed = ", ".join(["name", *declared])
        message = f"unknown parameter of offloader {name!r}; allowed: {allowed}"
    return Invalid(join(here, err.param), message, err.hint)


# ------------------------------------------------------------------ cross-key rules


def _network(out: dict, at: str, ctx: Context) -> dict:
    """A downlink defaults to the uplink's keys; the rate comes from bandwidth_mbps or
    from the trace, never both; one queue limit (100 packets unless bytes are given).
    Each link comes out with every setting (None where a trace or the other limit
    stands in)."""
    if "downlink" not in out:
        out["downlink"] = dict(out["uplink"])
    trace = out.get("trace")
    for direction in ("uplink", "downlink"):
        link = out[direction]
        here = f"{at}.{direction}.bandwidth_mbps"
        if trace is None and "bandwidth_mbps" not in link:
            raise Invalid(
                here, f"missing; required (unless {at}.trace is given): {_BANDWIDTH.allowed}"
            )
        if trace is not None and "bandwidth_mbps" in link:
            raise bad(here, link["bandwidth_mbps"], f"no bandwidth_mbps with {at}.trace")
        if "queue_bytes" in link and "queue_packets" in link:
            raise bad(
                f"{at}.{direction}.queue_bytes",
                link["queue_bytes"],
                "either queue_packets or queue_bytes, not both",
            )
        if "queue_bytes" not in link:
            link.setdefault("queue_packets", default_of(LinkSpec, "queue_packets"))
        out[direction] = {f.name: link.get(f.name) for f, _ in settings_of(LinkSpec)}
    return out


def _check_start_stop(out: dict, at: str, ctx: Context) -> dict:
    stop, start = out.get("stop_s"), out.get("start_s")
    if stop is not None and start is not None and not stop > start:
        raise bad(
            join(at, "stop_s"), stop, f"a number > start_s ({start:g}), or null (until the end)"
        )
    return out


# ---------------------------------------------------------------------------- schema


def _setting_check(meta) -> Any:
    if meta.choices:
        return Choice(*meta.choices)
    if meta.kind is str:
        return Str()
    number = Int if meta.kind is int else Num
    return number(gt=meta.gt, ge=meta.ge, lt=meta.lt, le=meta.le)


def _setting_default(f, meta) -> Any:
    """An optional setting is absent unless given (the network rule fills it in)."""
    if meta.optional:
        return OMIT
    return REQUIRED if f.default is MISSING else f.default


# A link's keys are LinkSpec's declared settings.
LINK = Record(
    {
        f.name: Field(_setting_check(meta), _setting_default(f, meta))
        for f, meta in settings_of(LinkSpec)
    }
)
_BANDWIDTH = LINK.fields["bandwidth_mbps"].check
_HOST = Record({"cpu": Field(Num(gt=0, le=MAX_CPU), 1.0)})
# how the device's share is emulated (docs/scenarios.md, `device:`): `dilate` stretches each
# piece of device work to its CPU time / share; `cfs` is a CFS quota on its host's cgroup
CPU_MODES = ("dilate", "cfs")
_DEVICE = Record({**_HOST.fields, "cpu_mode": Field(Choice(*CPU_MODES), CPU_MODES[0])})
# where the edge halves run (docs/edge.md): auto is cuda where a GPU is usable, else cpu
_EDGE = Record({**_HOST.fields, "device": Field(EdgeDeviceChoice(), "cpu")})
_WINDOW = {
    "direction": Field(Choice("up", "down"), "up"),
    "start_s": Field(Num(ge=0), 0),
    "stop_s": Field(Nullable(Num(ge=0)), None),
}
TRAFFIC = Tagged(
    "type",
    {
        "tcp_bulk": {"flows": Field(Int(ge=1), 1), **_WINDOW},
        "udp_cbr": {"rate_mbps": Field(Num(gt=0)), **_WINDOW},
        "udp_onoff": {
            "rate_mbps": Field(Num(gt=0)),
            "on_s": Field(Num(gt=0)),
            "off_s": Field(Num(gt=0)),
            "distribution": Field(Choice("exponential", "pareto"), "exponential"),
            **_WINDOW,
        },
        "poisson": {
            "rate_hz": Field(Num(gt=0)),
            "train_packets": Field(Int(ge=1), 10),
            "packet_bytes": Field(Int(ge=64, le=1500), 1000),
            **_WINDOW,
        },
    },
    "traffic",
    post=_check_start_stop,
)
TOP = Record(
    {
        "name": Field(Str(), lambda ctx: ctx.source.stem),
        "seed": Field(Int(ge=0, le=2**32 - 1), 1),
        "model": Field(Model()),
        "samples": Field(Int(ge=1, le=100000), 100),
        # a folder of images replacing an image plugin's test set (testbed.models.image_folder)
        "test_data": Field(File(folder=True), OMIT),
        # the accuracy bound of the report's comparisons: an offloader's configuration
        # counts only within this many points of the unmodified model
        "max_drop_pp": Field(Num(ge=0, le=100), 1.0),
        "arrival": Field(Arrival(), "closed"),
        "request_timeout_s": Field(Num(gt=0), 30),
        # above it a request that ran is flagged `stalled` (testbed.results.records)
        "stall_ms": Field(StallMs(), "auto"),
        "devices": Field(Int(ge=1, le=MAX_DEVICES), 1),
        "repeats": Field(Int(ge=1, le=1000), 1),
        "device": Field(_DEVICE, {}),
        "edge": Field(_EDGE, {}),
        "network": Field(
            Record(
                {
                    "uplink": Field(LINK),
                    "downlink": Field(LINK, OMIT),  # default: a copy of uplink
                    "trace": Field(
                        Nullable(Record({"uplink": Field(File()), "downlink": Field(File())})),
                        None,
                    ),
                    "backend": Field(Choice("auto", "netem", "userspace"), "auto"),
                    "congestion_control": Field(Choice("cubic", "bbr", "reno"), "cubic"),
                },
                post=_network,
            )
        ),
        "traffic": Field(
            ListOf(TRAFFIC, "a list of mappings, each with type: " + " | ".join(TRAFFIC.records)),
            [],
        ),
        "offloaders": Field(Offloaders(), ["local", "raw"]),
        "expect": Field(ListOf(Str(), "a list of non-empty strings"), []),
    }
)


def key_paths(check: Any = TOP, at: str = "") -> list[str]:
    """Every key path the schema knows (for the reference documentation's tests)."""
    if isinstance(check, Nullable):
        check = check.inner
    if isinstance(check, ListOf):
        return key_paths(check.item, f"{at}[]")
    if isinstance(check, Arrival):
        check = check.tagged
    if isinstance(check, Tagged):
        return sorted({p for r in check.records.values() for p in key_paths(r, at)})
    if isinstance(check, Record):
        out = []
        for key, spec in check.fields.items():
            out.append(join(at, key))
            out += key_paths(spec.check, join(at, key))
        return out
    return []
