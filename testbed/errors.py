"""Errors a user can fix, each mapped to the exit status of DESIGN.md.

The command line prints their message (no traceback) and exits with `exit_status`.
"""


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
