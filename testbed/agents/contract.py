"""Typed contracts between the runner and the agents: the job the runner hands each
device agent (`logs/device_job*.json`), the metadata the agent hands back
(`logs/device_meta*.json`) and the record of each request (`records*.jsonl`, from
which `requests.csv` is made).

Each is a frozen dataclass whose JSON form is checked on the way in: a missing, unknown
or mistyped key is a `ContractError` naming the key, so a runner and an agent that
disagree stop at once instead of running on a default. A key may be absent only where
its field declares a default here (job files from before a feature). Standard library
only: the device agent reads its job before it imports torch.
"""

from __future__ import annotations

import functools
import json
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Self

from testbed.errors import TestbedError

# a request's outcomes: `not_run` is a request the device never started (the edge was
# lost before it): it has no measurement and never enters a statistic
STATUSES = ("ok", "error", "timeout", "not_run")
NOT_RUN = "not_run"


class ContractError(TestbedError, ValueError):
    """A job, metadata or record file that does not hold what its contract says."""


def _optional() -> Any:
    """A field that may be absent: None, and left out of the JSON when None."""
    return field(default=None, metadata={"omit_none": True})


def _phase() -> Any:
    """A field that is one phase of a request's latency (ms), in `PHASES`."""
    return field(metadata={"phase": True})


class Contract:
    """Base of the contracts: their checked JSON form."""

    @classmethod
    def from_dict(cls, data: Any, source: str = "") -> Self:
        """The contract `data` (parsed JSON) holds; ContractError naming the bad key
        otherwise. `source`: where it came from, for the message."""
        try:
            return _build(cls, data, "")
        except ContractError as exc:
            raise ContractError(f"{source or cls.__name__}: {exc}") from None

    @classmethod
    def from_json(cls, text: str, source: str = "") -> Self:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ContractError(f"{source or cls.__name__}: not JSON: {exc}") from None
        return cls.from_dict(data, source)

    @classmethod
    def read(cls, path: str | Path) -> Self:
        return cls.from_json(Path(path).read_text(), str(path))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (lists, not tuples), in field order."""
        cls: type = type(self)
        out = {}
        for name, omit_none in _layout(cls):
            value = getattr(self, name)
            if value is None and omit_none:
                continue
            out[name] = value if type(value) in _SCALARS else _plain(value)
        return out

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def write(self, path: str | Path, indent: int | None = None) -> None:
        Path(path).write_text(self.to_json(indent))


# ---------------------------------------------------------------- runner -> device agent


@dataclass(frozen=True, kw_only=True)
class Arrival(Contract):
    """When requests start: `closed` (each once the previous one has its reply) or
    `poisson` (open loop at `rate_hz`, whatever the replies), as the scenario says."""

    process: str
    rate_hz: float | None = _optional()

    def __post_init__(self) -> None:
        closed = self.process == "closed" and self.rate_hz is None
        poisson = self.process == "poisson" and self.rate_hz is not None and self.rate_hz > 0
        if not (closed or poisson):
            raise ContractError(
                f"unknown arrival {self.to_dict()!r}: expected {{'process': 'closed'}} or "
                "{'process': 'poisson', 'rate_hz': R > 0}"
            )

    @property
    def open_rate_hz(self) -> float | None:
        """The open-loop rate in Hz, or None for closed loop."""
        return self.rate_hz if self.process == "poisson" else None


CLOSED_LOOP = Arrival(process="closed")


@dataclass(frozen=True, kw_only=True)
class OffloaderJob(Contract):
    """One offloader of the run, as the device builds it and sends it on in its HELLO."""

    name: str  # registered name (testbed.offloaders)
    params: dict[str, Any]  # the scenario's parameters, passed to its constructor
    label: str  # its name in the results (the name, plus parameters where it repeats)


@dataclass(frozen=True, kw_only=True)
class DeviceJob(Contract):
    """Everything one device agent needs, since it runs in its own host and process."""

    plugin: str
    test_data: str | None = None  # the plugin's own test data where None
    offloaders: tuple[OffloaderJob, ...]
    samples: tuple[int, ...]  # indices into the test data, the same for every offloader
    edge_host: str
    edge_port: int
    timeout_s: float  # a request without a reply by then is a timeout
    threads: int  # torch threads
    warmup: int  # unrecorded requests per offloader before its measured ones
    pings: int  # RTT samples at the start
    arrival: Arrival = CLOSED_LOOP
    seed: int = 1  # the scenario's: seeds the open-loop schedule
    device_index: int = 0
    devices: int = 1  # devices in the run, which wait for each other at `barrier`
    barrier: str | None = None  # folder of the start barrier; None: start alone
    records: str  # the records file (JSON lines) to append to
    meta: str  # where to write the DeviceMeta
    loaded: str | None = None  # file written once loaded, to be moved into `cgroup`
    cgroup: str | None = None  # the host's CPU cgroup; None: no CPU limit to wait for
    dilate_share: float | None = None  # device: {cpu_mode: dilate}: its share, else None

    def __post_init__(self) -> None:
        if self.cgroup is not None and self.loaded is None:
            raise ContractError("key 'loaded': needed with 'cgroup'")
        if self.devices > 1 and self.barrier is None:
            raise ContractError(f"key 'barrier': needed with {self.devices} devices")

    def hello(self) -> dict[str, Any]:
        """The HELLO that configures the edge halves of the offloaders."""
        return {"plugin": self.plugin, "offloaders": [o.to_dict() for o in self.offloaders]}


# ---------------------------------------------------------------- device agent -> runner


@dataclass(frozen=True, kw_only=True)
class DeviceMeta(Contract):
    """What a device agent found before its requests, for environment.json."""

    rtt_ms: float | None  # median of the start pings
    offloaders: tuple[dict[str, Any], ...]  # the edge halves' descriptions (HELLO reply)
    device_offloaders: tuple[dict[str, Any], ...]  # the device halves' (profiles, choices)
    device_kernel_warmup_s: float | None  # None: no offloader needs the kernels
    device_prepare_s: float  # profiling on the CPU-limited device
    arrival: Arrival
    device_index: int


# ---------------------------------------------------------------- the request record


@dataclass(frozen=True, kw_only=True)
class RequestRecord(Contract):
    """One measured request, a line of records*.jsonl: its phases as the device saw them
    and its outcome. Latency counts from the intended start (no coordinated omission)."""

    offloader: str  # label
    device: int  # index of the device that sent it
    request: int  # id on the device's connection(s), unique in its run
    sample: int  # index into the test data
    label: int  # the sample's label
    # intended start, after the offloader's first request's (None: a closed-loop request
    # not run, which never had one)
    intended_ms: float | None
    queue_ms: float = _phase()  # how late the device started it (0 in closed loop)
    device_ms: float = _phase()
    encode_ms: float = _phase()
    uplink_ms: float = _phase()  # send to the edge's read of the last byte
    decode_ms: float = _phase()
    edge_ms: float = _phase()
    downlink_ms: float = _phase()
    bytes_up: int  # the request's frame, header included (0: answered on the device)
    bytes_down: int
    est_uplink_mbps: float | None  # the device's uplink estimate then (None: none yet)
    choice: str | None = _optional()  # JSON of an adaptive choice; absent: device failed
    stream: tuple[int, int, int] | None = _optional()  # port, offsets up and down; sent only
    total_ms: float | None  # None only for `not_run`: nothing was measured
    prediction: int | tuple[tuple[float, ...], ...]  # class (-1: none) or detector boxes
    status: str  # one of STATUSES
    error: str  # why, unless ok

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ContractError(f"key 'status': {self.status!r} is not one of {STATUSES}")
        if (self.total_ms is None) != (self.status == NOT_RUN):
            raise ContractError("key 'total_ms': null exactly when the status is not_run")


# the latency phases, in the order they happen (the report's breakdown)
PHASES = tuple(f.name for f in fields(RequestRecord) if f.metadata.get("phase"))
RECORD_KEYS = tuple(f.name for f in fields(RequestRecord))  # records*.jsonl's, in order
# added to a record by comparing its prediction with the unmodified model's
COMPARISON_COLUMNS = ("correct", "agrees", "tp", "fp", "fn")
# added by the runner: 1 where a request that ran took longer than the scenario's stall_ms
FLAG_COLUMNS = ("stalled",)
# requests.csv's columns in order: every record key but `stream` (bytes on the wire are
# capture.csv's), the comparison, and `stalled` (the runner's flag: above `stall_ms`)
REQUEST_COLUMNS = (
    "offloader",
    "request",
    "sample",
    "device_ms",
    "encode_ms",
    "uplink_ms",
    "decode_ms",
    "edge_ms",
    "downlink_ms",
    "total_ms",
    "bytes_up",
    "bytes_down",
    "prediction",
    "label",
    "correct",
    "agrees",
    "status",
    "error",
    "choice",
    "est_uplink_mbps",
    "queue_ms",
    "intended_ms",
    "device",
    "tp",
    "fp",
    "fn",
    "stalled",
)


# ---------------------------------------------------------------- checking


def _build(cls: type, data: Any, path: str) -> Any:
    if not isinstance(data, dict):
        raise ContractError(f"{_where(path)}expected an object, got {_kind(data)}")
    checks = _checks(cls)
    for key in data:
        if key not in checks:
            raise ContractError(f"unknown key {_key(path, key)!r} (known: {', '.join(checks)})")
    values = {}
    for name, (check, required) in checks.items():
        if name in data:
            values[name] = check(data[name], _key(path, name))
        elif required:
            raise ContractError(f"missing key {_key(path, name)!r}")
    try:
        return cls(**values)
    except ContractError as exc:
        raise ContractError(f"{_where(path)}{exc}") from None


Check = typing.Callable[[Any, str], Any]


@functools.cache
def _checks(cls: type) -> dict[str, tuple[Check, bool]]:
    """Per field: its check, and whether its key is required (it has no default)."""
    hints = typing.get_type_hints(cls)
    return {
        f.name: (_check(hints[f.name]), f.default is MISSING and f.default_factory is MISSING)
        for f in fields(cls)
    }


@functools.cache
def _check(hint: Any) -> Check:
    """A function of (value, key) that returns `value` as `hint` says (lists become
    tuples, objects contracts), or raises ContractError naming `key`. An int is a float,
    a bool neither. Built once per type: a record is checked on every request."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)

    def wrong(value: Any, key: str) -> typing.NoReturn:
        raise ContractError(f"key {key!r}: expected {_describe(hint)}, got {_kind(value)}")

    if hint is Any:
        return lambda value, key: value
    if hint in (int, float, str, bool, type(None)):
        accepted = {int: (int,), float: (int, float), str: (str,), bool: (bool,)}
        exact = accepted.get(hint, (type(None),))

        def scalar(value: Any, key: str) -> Any:
            if isinstance(value, exact) and (hint is bool or not isinstance(value, bool)):
                return value
            return wrong(value, key)

        return scalar
    if origin in (typing.Union, types.UnionType):
        options = [_check(a) for a in args]

        def union(value: Any, key: str) -> Any:
            for option in options:
                try:
                    return option(value, key)
                except ContractError:
                    continue
            return wrong(value, key)

        return union
    if origin is tuple:
        repeated = len(args) == 2 and args[1] is Ellipsis
        items = [_check(a) for a in (args[:1] if repeated else args)]

        def sequence(value: Any, key: str) -> Any:
            if not isinstance(value, list | tuple) or not (repeated or len(value) == len(items)):
                return wrong(value, key)
            if repeated:
                return tuple(items[0](v, f"{key}[{i}]") for i, v in enumerate(value))
            pairs = enumerate(zip(items, value, strict=True))
            return tuple(check(v, f"{key}[{i}]") for i, (check, v) in pairs)

        return sequence
    if origin is dict:
        item = _check(args[1])

        def mapping(value: Any, key: str) -> Any:
            if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
                return wrong(value, key)
            return {k: item(v, f"{key}.{k}") for k, v in value.items()}

        return mapping
    if isinstance(hint, type) and issubclass(hint, Contract):

        def contract(value: Any, key: str) -> Any:
            return _build(hint, value, key) if isinstance(value, dict) else wrong(value, key)

        return contract
    raise TypeError(f"no check for {hint!r}")


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of ({_describe(args[0])})"
        return f"a list of {len(args)} ({', '.join(_describe(a) for a in args)})"
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    if hint is type(None):
        return "null"
    if origin is dict:
        return "an object"
    if isinstance(hint, type) and issubclass(hint, Contract):
        return f"an object ({hint.__name__})"
    return names.get(hint, str(hint))


def _kind(value: Any) -> str:
    text = json.dumps(value, default=repr)
    return f"{text[:60]}..." if len(text) > 63 else text


def _key(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _where(path: str) -> str:
    return f"key {path!r}: " if path else ""


_SCALARS = frozenset((int, float, str, bool, type(None)))


@functools.cache
def _layout(cls: type) -> tuple[tuple[str, bool], ...]:
    """Per field: its name, and whether it is left out of the JSON when None."""
    return tuple((f.name, bool(f.metadata.get("omit_none"))) for f in fields(cls))


def _plain(value: Any) -> Any:
    if isinstance(value, Contract):
        return value.to_dict()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
