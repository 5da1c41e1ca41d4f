"""Registry of model plugins: the shipped ones under `plugins/` and third-party ones
registered through the entry-point group `deepcod_testbed.plugins`.

Each shipped plugin is a subpackage of `plugins` with a `make_plugin()` factory; an
entry point names such a factory (`mypkg.plugin:make_plugin`). Plugins are built
lazily so that one broken plugin never stops the others from working.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from collections.abc import Callable
from functools import partial
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

from testbed.errors import PluginError
from testbed.models.plugin_api import Plugin

ENTRY_POINT_GROUP = "deepcod_testbed.plugins"


def _shipped() -> dict[str, Callable[[], Plugin]]:
    import plugins

    found: dict[str, Callable[[], Plugin]] = {}
    for info in pkgutil.iter_modules(plugins.__path__):
        if info.ispkg:
            found[info.name] = partial(_make_shipped, info.name)
    return found


def _make_shipped(name: str) -> Plugin:
    return importlib.import_module(f"plugins.{name}").make_plugin()


def _third_party() -> dict[str, Callable[[], Plugin]]:
    return {ep.name: partial(_make_installed, ep) for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _make_installed(entry_point: EntryPoint) -> Plugin:
    return entry_point.load()()


def available() -> list[str]:
    """Names of all registered plugins (without importing them)."""
    return sorted({**_shipped(), **_third_party()})


def get(name: str) -> Plugin:
    factories = {**_shipped(), **_third_party()}
    if name not in factories:
        raise PluginError(f"unknown plugin {name!r}; registered: {', '.join(sorted(factories))}")
    try:
        plugin = factories[name]()
    except PluginError:
        raise
    except Exception as exc:  # a third party's bug must not look like ours
        raise PluginError(f"plugin {name!r} failed to load: {type(exc).__name__}: {exc}") from exc
    if not isinstance(plugin, Plugin):
        raise PluginError(
            f"plugin {name!r}: factory returned {type(plugin).__name__}, not a Plugin"
        )
    return plugin


def test_data(plugin: Plugin, folder: Path | None = None):
    """The plugin's test set, or a folder of the user's own inputs in its place (scenario
    key `test_data:`, `--test-data`); a plugin error names the plugin, a bad folder the
    file (both exit 2)."""
    if folder is None:
        return plugin.test_data()
    data = plugin.test_data_from(Path(folder))
    spec = plugin.input_spec
    if data.inputs.shape[1:] != tuple(spec.shape) or len(data.inputs) != len(data.labels):
        raise PluginError(
            f"plugin {plugin.name!r}: test_data_from({folder}) gave inputs "
            f"{data.inputs.shape} for {len(data.labels)} labels; expected (N, "
            f"{', '.join(map(str, spec.shape))})"
        )
    return data


def weights_missing(plugin: Plugin) -> str | None:
    """Why `load_model` would fail for want of the weights file (with the command that
    trains them), or None; a plugin that loads its model its own way is taken at its word."""
    if type(plugin).load_model is not Plugin.load_model:
        return None
    path = plugin.artefacts.get("weights")
    return None if path is not None and Path(path).is_file() else plugin.weights_missing(path)


def trained_artefacts(plugin: Plugin) -> list[str]:
    """Names (without `.pt`) of the trained artefacts present, the weights aside: the files
    beside the plugin's code (resume states aside) and the `artefacts` entries that exist."""
    module = sys.modules[type(plugin).__module__]
    folder = Path(module.__file__ or ".").resolve().parent  # as Plugin.artefact_file finds it
    found = {p.stem for p in folder.glob("*.pt") if not p.name.endswith(".resume.pt")}
    found |= {k for k, p in plugin.artefacts.items() if Path(p).is_file()}
    return sorted(found - {"weights"})
