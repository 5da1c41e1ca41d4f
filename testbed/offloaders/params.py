"""Offloader parameters: their declaration (`Param`), the one check every caller uses
(`check_params`: the scenario schema, the edge agent's HELLO and each constructor), and
the error it raises (`ParamError`), which the scenario schema turns into a key path."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Param:
    """A parameter an offloader accepts in a scenario (`{name: jpeg, quality: 75}`)."""

    type: type
    default: Any
    allowed: str  # human words for the valid values, used in error messages
    check: Callable[[Any], bool] = lambda value: True
    # another parameter this one replaces when not at its default (deepcod's `ratios` and
    # `ratio`): giving both, each not at its default, is an error
    excludes: str | None = None


class ParamError(ValueError):
    """A bad offloader parameter. `param` is its key (None: about the offloader as a
    whole), `message` what is wrong and what is allowed, `hint` a suggested fix or ""."""

    def __init__(self, param: str | None, message: str, hint: str = "") -> None:
        text = f"{param}: {message}" if param is not None else message
        super().__init__(f"{text}; {hint}" if hint else text)
        self.param, self.message, self.hint = param, message, hint


def did_you_mean(word: Any, choices: list[str]) -> str:
    """The closest of `choices` to a misspelt `word` as a hint, or "" if none is close."""
    close = difflib.get_close_matches(str(word), choices, n=1)
    return f"did you mean {close[0]!r}?" if close else ""


def check_params(name: str, params: Mapping[str, Param], given: Mapping[str, Any]) -> dict:
    """`given` checked against offloader `name`'s `params`, defaults filled, ints that
    stand for floats made floats; raises ParamError. Checking its own output again
    returns it unchanged, so a value may pass through more than one caller."""
    for key in given:
        if key not in params:
            allowed = ", ".join(params) or "none"
            raise ParamError(
                key,
                f"unknown parameter of offloader {name!r}; allowed: {allowed}",
                did_you_mean(key, list(params)),
            )
    out = {}
    for key, spec in params.items():
        value = given.get(key, spec.default)
        if spec.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if (
            not isinstance(value, spec.type)
            or isinstance(value, bool) != (spec.type is bool)
            or not spec.check(value)
        ):
            raise ParamError(key, f"got {value!r}; allowed: {spec.allowed}")
        out[key] = value
    for key, spec in params.items():
        other = spec.excludes
        if other is None or out[key] == spec.default or other not in given:
            continue
        if given[other] != params[other].default:
            raise ParamError(
                key,
                f"not together with {other} ({given[other]!r}); allowed: one or the other",
            )
    return out
