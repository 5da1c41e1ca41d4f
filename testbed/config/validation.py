"""The checks a schema is built from, and the problem they raise.

A check is called as `check(value, at, ctx)` and returns the resolved value (defaults
filled, numbers made floats, paths made absolute) or raises `Invalid` naming the key
path `at`; its `allowed` says in words what it accepts, for the messages. A schema is a
table of them: a `Record` of `Field`s, `Tagged` records picked by a key, `ListOf`,
`Nullable`, and leaf checks (`Num`, `Int`, `Str`, `Choice`, `File`). Rules that span
several keys are `post` hooks of a record. Nothing here knows what a scenario is
(testbed.config.schema does).
"""

from __future__ import annotations

import copy
import difflib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


class Invalid(Exception):
    """A problem at a key path; the loader adds the file name and line."""

    def __init__(self, at: str, problem: str, hint: str = "") -> None:
        super().__init__(at, problem, hint)
        self.at, self.problem, self.hint = at, problem, hint


def show(value: Any) -> str:
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


def bad(at: str, value: Any, allowed: str, hint: str = "") -> Invalid:
    """The usual problem: `at: got VALUE; allowed: ALLOWED`."""
    return Invalid(at, f"got {show(value)}; allowed: {allowed}", hint)


def did_you_mean(word: Any, choices: list[str]) -> str:
    close = difflib.get_close_matches(str(word), choices, n=1)
    return f"did you mean {close[0]!r}?" if close else ""


def join(at: str, key: Any) -> str:
    """The key path of `key` inside the mapping at `at`."""
    return f"{at}.{key}" if at else str(key)


@dataclass(frozen=True)
class Context:
    source: Path  # the file being checked, as the user named it (relative paths start there)


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


def _fmt(bound: float) -> str:
    return f"{bound:g}" if isinstance(bound, float) else str(bound)


# ------------------------------------------------------------------------ leaf checks


@dataclass(frozen=True)
class Num:
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

    def __call__(self, value: Any, at: str, ctx: Context) -> Any:
        if isinstance(value, bool) or not self._typed(value):
            raise bad(at, value, self.allowed, _number_hint(value))
        if (
            (self.gt is not None and not value > self.gt)
            or (self.ge is not None and not value >= self.ge)
            or (self.lt is not None and not value < self.lt)
            or (self.le is not None and not value <= self.le)
        ):
            raise bad(at, value, self.allowed)
        return self._resolve(value)

    def _resolve(self, value: Any) -> Any:
        return float(value)


@dataclass(frozen=True)
class Int(Num):
    noun = "an integer"

    def _typed(self, value: Any) -> bool:
        return isinstance(value, int)

    def _resolve(self, value: Any) -> Any:
        return int(value)


@dataclass(frozen=True)
class Str:
    allowed = "a non-empty string"

    def __call__(self, value: Any, at: str, ctx: Context) -> Any:
        if not isinstance(value, str) or not value.strip():
            raise bad(at, value, self.allowed)
        return value


class Choice:
    def __init__(self, *options: str) -> None:
        self.options = options
        self.allowed = "one of " + ", ".join(options)

    def __call__(self, value: Any, at: str, ctx: Context) -> Any:
        if not isinstance(value, str) or value not in self.options:
            raise bad(at, value, self.allowed, did_you_mean(value, list(self.options)))
        return value


class File:
    """A path to an existing file (or, `folder=True`, folder), relative to the checked
    file's folder; resolved to an absolute path."""

    def __init__(self, folder: bool = False) -> None:
        self.folder = folder
        self.kind = "folder" if folder else "file"
        self.allowed = f"a path to an existing {self.kind} (relative to the scenario file's folder)"

    def __call__(self, value: Any, at: str, ctx: Context) -> Any:
        if not isinstance(value, str) or not value.strip():
            raise bad(at, value, self.allowed)
        path = Path(value).expanduser()
        if not path.is_absolute():
            path = ctx.source.parent / path
        path = path.resolve()
        if not (path.is_dir() if self.folder else path.is_file()):
            what = "does not exist"
            if path.exists():
                what = "is a file" if self.folder else "is a directory"
            raise Invalid(at, f"got {value!r}: {path} {what}; allowed: {self.allowed}")
        return path


# ------------------------------------------------------------------ composite checks


@dataclass(frozen=True)
class Nullable:
    inner: Any

    @property
    def allowed(self) -> str:
        return f"{self.inner.allowed}, or null"

    def __call__(self, value: Any, at: str, ctx: Context) -> Any:
        if value is None:
            return None
        try:
            return self.inner(value, at, ctx)
        except Invalid as err:
            if err.at != at:  # a problem inside the value: report it as it is
                raise
            raise bad(at, value, self.allowed, err.hint) from None


@dataclass(frozen=True)
class ListOf:
    item: Any
    allowed: str

    def __call__(self, value: Any, at: str, ctx: Context) -> Any:
        if not isinstance(value, list):
            raise bad(at, value, self.allowed)
        return tuple(self.item(v, f"{at}[{i}]", ctx) for i, v in enumerate(value))


REQUIRED = object()  # a field without a default
OMIT = object()  # an optional field left out of the result when absent


@dataclass(frozen=True)
class Field:
    check: Any
    default: Any = REQUIRED  # raw input value, or callable(ctx) giving one; run through check


class Record:
    """A mapping with a fixed set of keys; `post(out, at, ctx)` applies cross-key rules
    and may turn the dict into something else."""

    def __init__(
        self,
        fields: dict[str, Field],
        post: Callable[[dict, str, Context], Any] | None = None,
        what: str = "",
    ) -> None:
        self.fields, self.post, self.what = fields, post, what
        self.allowed = "a mapping with keys " + ", ".join(fields)

    def __call__(self, value: Any, at: str, ctx: Context) -> Any:
        if not isinstance(value, dict):
            raise bad(at, value, self.allowed)
        keys = list(self.fields)
        for key in value:
            if key not in self.fields:
                where = f" {self.what}" if self.what else ""
                raise Invalid(
                    join(at, key),
                    f"unknown key{where}; allowed: {', '.join(keys)}",
                    did_you_mean(key, keys),
                )
        out: dict[str, Any] = {}
        for key, spec in self.fields.items():
            here = join(at, key)
            if key in value:
                out[key] = spec.check(value[key], here, ctx)
            elif spec.default is REQUIRED:
                raise Invalid(here, f"missing; required: {spec.check.allowed}")
            elif spec.default is not OMIT:
                default = spec.default(ctx) if callable(spec.default) else spec.default
                out[key] = spec.check(copy.deepcopy(default), here, ctx)
        return self.post(out, at, ctx) if self.post else out


class Tagged:
    """A mapping whose `tag` key picks the record for the rest (`type: udp_cbr`)."""

    def __init__(
        self,
        tag: str,
        variants: dict[str, dict[str, Field]],
        what: str,
        post: Callable[[dict, str, Context], Any] | None = None,
    ) -> None:
        self.tag = tag
        self.choice = Choice(*variants)
        self.records = {
            name: Record(
                {tag: Field(self.choice), **fields},
                post=post,
                what=f"for {what} {tag} {name!r}",
            )
            for name, fields in variants.items()
        }
        self.allowed = f"a mapping with {tag}: {' | '.join(variants)} and its keys"

    def __call__(self, value: Any, at: str, ctx: Context) -> Any:
        if not isinstance(value, dict):
            raise bad(at, value, self.allowed)
        if self.tag not in value:
            raise Invalid(join(at, self.tag), f"missing; required: {self.choice.allowed}")
        kind = self.choice(value[self.tag], join(at, self.tag), ctx)
        return self.records[kind](value, at, ctx)
