"""A link direction's settings, declared once.

Each setting of `network.uplink` / `network.downlink` is a field of `LinkSpec`, and its
`Setting` metadata holds all that the rest of the testbed needs to know about it: the
type and bounds the scenario schema checks, the default, what it means, and the link
element's command-line flag. Derived from it, never written out again: the schema's link
record (testbed.config.schema), the resolved scenario's link mapping (`LinkSpec.to_dict`),
and the element's argv and argparse parser (`argv_of`, `add_arguments`, `from_arguments`,
used by element.py). A new link setting is a field here and a row in docs/scenarios.md.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from testbed.emulation.link.impairments import JITTER_DISTRIBUTIONS, LOSS_MODELS

METADATA_KEY = "setting"


@dataclass(frozen=True)
class Setting:
    """How one setting is checked, explained and handed to a program."""

    kind: type  # float, int or str
    help: str
    gt: float | None = None  # bounds, as the scenario schema checks them
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    choices: tuple[str, ...] = ()
    flag: str | None = None  # the program's option; None: no program takes it
    # May be left out of a scenario: None then (and absent from the resolved scenario),
    # or a value set by a rule across settings (testbed.config.schema's network rule).
    optional: bool = False


def setting(default: Any = MISSING, **meta: Any) -> Any:
    """A dataclass field carrying its `Setting`. What the default already says is not
    written again: its type is the `kind`, and a None default makes the setting optional."""
    if default is not MISSING and default is not None:
        meta.setdefault("kind", type(default))
    meta.setdefault("optional", default is None)
    return field(default=default, metadata={METADATA_KEY: Setting(**meta)})


def settings_of(cls: type) -> list[tuple[Any, Setting]]:
    """(dataclass field, its Setting) for each declared setting of `cls`, in order."""
    return [(f, f.metadata[METADATA_KEY]) for f in fields(cls) if METADATA_KEY in f.metadata]


@dataclass(frozen=True, kw_only=True)
class LinkSpec:
    """One direction of the device-edge link. `bandwidth_mbps` is None when a trace
    (`NetworkSpec.trace`) sets the rate instead; exactly one of `queue_packets` and
    `queue_bytes` is set."""

    bandwidth_mbps: float | None = setting(
        kind=float,
        gt=0,
        le=10000,
        flag="--rate-mbps",
        optional=True,
        help="link rate in Mbit/s (serialization); absent: a trace sets it",
    )
    delay_ms: float = setting(0.0, ge=0, le=10000, flag="--delay-ms", help="one-way delay in ms")
    jitter_ms: float = setting(
        0.0,
        ge=0,
        le=10000,
        flag="--jitter-ms",
        help="delay variation in ms (standard deviation for normal, half-width for "
        "uniform, mean excess for pareto)",
    )
    jitter_distribution: str = setting(
        "normal",
        choices=JITTER_DISTRIBUTIONS,
        flag="--jitter-distribution",
        help="the distribution of the delay variation",
    )
    loss_pct: float = setting(
        0.0, ge=0, lt=100, flag="--loss-pct", help="packet loss in percent (long-run average)"
    )
    loss_model: str = setting(
        "random",
        choices=LOSS_MODELS,
        flag="--loss-model",
        help="random (independent losses) or gilbert_elliott (bursts)",
    )
    loss_burst_packets: float = setting(
        1.0,
        ge=1,
        le=1000,
        flag="--loss-burst",
        help="mean length of a loss burst in packets, for gilbert_elliott",
    )
    # The queue is the bottleneck qdisc's alone (no flag): 100 packets unless a byte
    # limit is given instead.
    queue_packets: int | None = setting(
        100,
        ge=1,
        le=100000,
        optional=True,
        help="the bottleneck queue's limit in packets (a pfifo)",
    )
    queue_bytes: int | None = setting(
        None,
        kind=int,
        ge=1500,
        le=100_000_000,
        help="the bottleneck queue's limit in bytes (a bfifo), instead of queue_packets",
    )

    def to_dict(self) -> dict:
        """The settings as plain data, as a scenario file writes them: an optional
        setting that is None is absent (the trace sets the rate; one queue limit)."""
        return {
            f.name: getattr(self, f.name)
            for f, meta in settings_of(LinkSpec)
            if not (meta.optional and getattr(self, f.name) is None)
        }


def default_of(cls: type, name: str) -> Any:
    """The declared default of setting `name` of `cls`."""
    return next(f.default for f, _ in settings_of(cls) if f.name == name)


# ------------------------------------------------------------- command lines


def argv_of(obj: Any) -> list[str]:
    """The flagged settings of a dataclass instance as command-line arguments; a None
    value is left out (the parser reads it back as None)."""
    out: list[str] = []
    for f, meta in settings_of(type(obj)):
        value = getattr(obj, f.name)
        if meta.flag is not None and value is not None:
            out += [meta.flag, str(value)]  # str of a float is exact (shortest repr)
    return out


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """An option for each flagged setting of `cls`, its default the declared one."""
    for f, meta in settings_of(cls):
        if meta.flag is None:
            continue
        parser.add_argument(
            meta.flag,
            dest=f.name,
            type=meta.kind,
            choices=meta.choices or None,
            required=f.default is MISSING and not meta.optional,
            default=None if f.default is MISSING else f.default,
            help=meta.help,
        )


def from_arguments(cls: type, namespace: argparse.Namespace, **rest: Any) -> Any:
    """An instance of `cls` from the options `add_arguments` added (and `rest`); its
    settings without a flag take their defaults."""
    given = {f.name: getattr(namespace, f.name) for f, meta in settings_of(cls) if meta.flag}
    return cls(**given, **rest)
