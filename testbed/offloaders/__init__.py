"""Offloader registry: the agents and the scenario schema find an offloader by name.

To extend it, `@register` an `Offloader` in a module or sub-package here, or name one in
the entry-point group `deepcod_testbed.offloaders` (docs/offloaders.md, "Write an
offloader"). Discovery waits for the first look-up, so importing the package stays cheap.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from testbed.errors import PluginError
from testbed.offloaders.base import DeviceResult, Offloader, PhaseTimer
from testbed.offloaders.params import Param, ParamError, check_params, did_you_mean

ENTRY_POINT_GROUP = "deepcod_testbed.offloaders"

_REGISTRY: dict[str, type[Offloader]] = {}
_walked = False


def register(cls: type[Offloader]) -> type[Offloader]:
    """Class decorator: make `cls` known under `cls.name`."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"offloader {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def _shipped() -> None:
    """Import every module and sub-package of this package once; `@register` does the rest."""
    global _walked
    if not _walked:
        for info in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{info.name}")
        _walked = True


def _is_shipped(cls: type[Offloader]) -> bool:
    return cls.__module__.startswith(__name__ + ".")


def _entry_points() -> dict:
    from importlib.metadata import entry_points  # slow to import; only when looked up

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def names() -> list[str]:
    """Every known offloader: the shipped ones in their `order`, then the others by name
    (third-party entry points are listed without being imported)."""
    _shipped()
    shipped = sorted((c for c in _REGISTRY.values() if _is_shipped(c)), key=lambda c: c.order)
    listed = [c.name for c in shipped]
    others = set(_REGISTRY).union(_entry_points()).difference(listed)
    return listed + sorted(others)


def get(name: str) -> type[Offloader]:
    """The class of offloader `name`; KeyError(name) if none is known, PluginError if a
    third party's entry point fails to load or does not name an Offloader."""
    _shipped()
    if name in _REGISTRY:
        return _REGISTRY[name]
    entry = _entry_points().get(name)
    if entry is None:
        raise KeyError(name)
    where = f"offloader {name!r} (entry point {entry.value!r} of {ENTRY_POINT_GROUP})"
    try:
        cls = entry.load()
    except Exception as exc:  # a third party's bug must not look like ours
        raise PluginError(f"{where} failed to load: {type(exc).__name__}: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, Offloader)):
        raise PluginError(f"{where} names {cls!r}, not an Offloader subclass")
    if getattr(cls, "name", None) != name:
        raise PluginError(
            f"{where} names a class called {getattr(cls, 'name', None)!r}; "
            "the entry point's name must be the class's `name`"
        )
    try:
        return register(cls)
    except ValueError as exc:
        raise PluginError(f"{where}: {exc}") from None


def validate_params(name: str, given: dict[str, Any]) -> dict[str, Any]:
    """Offloader `name`'s parameters checked (unknown keys, types, ranges) with defaults
    filled. Raises KeyError(name) for an unknown offloader, ParamError for a bad one."""
    cls = get(name)
    return check_params(name, cls.params, given)


__all__ = [
    "ENTRY_POINT_GROUP",
    "DeviceResult",
    "Offloader",
    "Param",
    "ParamError",
    "PhaseTimer",
    "did_you_mean",
    "get",
    "names",
    "register",
    "validate_params",
]
