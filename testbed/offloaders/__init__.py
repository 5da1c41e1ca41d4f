"""Offloader registry. A new offloader is a module here with a class decorated by
`@register`; the agents and the scenario schema find it by name."""

from __future__ import annotations

from typing import Any

from testbed.offloaders.base import DeviceResult, Offloader, Param, PhaseTimer

_REGISTRY: dict[str, type[Offloader]] = {}


def register(cls: type[Offloader]) -> type[Offloader]:
    if cls.name in _REGISTRY:
        raise ValueError(f"offloader {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def names() -> list[str]:
    return list(_REGISTRY)


def get(name: str) -> type[Offloader]:
    return _REGISTRY[name]


def validate_params(name: str, given: dict[str, Any]) -> dict[str, Any]:
    """Fill defaults and check values. Raises KeyError(name) for an unknown offloader,
    ValueError((param, message)) for a bad parameter."""
    cls = _REGISTRY[name]
    out = {}
    for key in given:
        if key not in cls.params:
            allowed = ", ".join(cls.params) or "none"
            raise ValueError((key, f"unknown parameter of offloader {name!r}; allowed: {allowed}"))
    for key, spec in cls.params.items():
        value = given.get(key, spec.default)
        if spec.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, spec.type) or isinstance(value, bool) != (spec.type is bool):
            raise ValueError((key, f"got {value!r}; allowed: {spec.allowed}"))
        if not spec.check(value):
            raise ValueError((key, f"got {value!r}; allowed: {spec.allowed}"))
        out[key] = value
    return out


# Importing the modules registers the offloaders, in the order listed.
from testbed.offloaders import local, raw  # noqa: E402,F401,I001  (listing order)
from testbed.offloaders import deepcod  # noqa: E402, F401
from testbed.offloaders import image_codec  # noqa: E402, F401
from testbed.offloaders import neurosurgeon, jalad  # noqa: E402, F401
from testbed.offloaders import bottlenet  # noqa: E402, F401
from testbed.offloaders import feature_codec  # noqa: E402, F401
from testbed.offloaders import deepdecision  # noqa: E402, F401

__all__ = ["DeviceResult", "Offloader", "Param", "PhaseTimer", "get", "names", "register"]
