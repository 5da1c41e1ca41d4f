"""Errors a user can fix, each mapped to the exit status of DESIGN.md.

The command line prints their message (no traceback) and exits with `exit_status`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class TestbedError(Exception):
    exit_status = 1


class ScenarioError(TestbedError):
    """Bad input: a scenario file, a plugin's declaration, an argument."""

    exit_status = 2


class EnvironmentMissing(TestbedError):
    """The machine lacks something (root, Mininet, a package); the message says the fix."""

    exit_status = 3


class GateFailed(TestbedError):
    """An `expect:` gate of the scenario did not hold."""

    exit_status = 4


class PluginError(ScenarioError):
    """A plugin failed to import, declares inconsistent stages, or lacks its artefacts."""


@contextlib.contextmanager
def reading(source: object, what: str) -> Iterator[None]:
    """Reading the input file `source` (a scenario file, a trace): the operating system's
    errors as the ScenarioError that names the file and says what it should be."""
    try:
        yield
    except FileNotFoundError:
        raise ScenarioError(f"{source}: no such {what}") from None
    except IsADirectoryError:
        raise ScenarioError(f"{source}: is a directory, not a {what}") from None
    except OSError as exc:
        raise ScenarioError(f"{source}: cannot read: {exc.strerror or exc}") from None
