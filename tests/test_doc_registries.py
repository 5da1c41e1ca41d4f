"""The docs' lists against the registries they describe: a new offloader or plugin, or a
renamed one, fails here until the docs say so."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import entry_points

from testbed import offloaders
from testbed.models import plugins
from tests.mininet_utils import ROOT


def shipped_offloaders() -> set[str]:
    return {n for n in offloaders.names() if offloaders.get(n).__module__.startswith("testbed.")}


def shipped_plugins() -> set[str]:
    installed = {ep.name for ep in entry_points(group=plugins.ENTRY_POINT_GROUP)}
    return set(plugins.available()) - installed


def registered_in_scenarios_md(text: str) -> set[str]:
    """The names of the sentence 'Registered now: `a`, `b` and `c`; their parameters'."""
    found = re.search(r"Registered now:(.*?);", text, re.S)
    assert found, "docs/scenarios.md lost its 'Registered now: ...;' sentence"
    return set(re.findall(r"`([a-z0-9_]+)`", found.group(1)))


def readme_plugin_table(text: str) -> set[str]:
    """The first column of the README's table whose header starts with `| plugin |`."""
    table = text.split("| plugin |", 1)[1].split("\n\n", 1)[0]
    return set(re.findall(r"^\| `([a-z0-9_]+)` \|", table, re.M))


def test_scenarios_md_lists_every_registered_offloader():
    listed = registered_in_scenarios_md((ROOT / "docs" / "scenarios.md").read_text())
    assert listed == shipped_offloaders()


def test_parsers_see_a_difference():
    text = "Registered now: `local`, `raw` and `deepcod`; their parameters"
    assert registered_in_scenarios_md(text) == {"local", "raw", "deepcod"} != shipped_offloaders()
    table = "| plugin | task |\n|---|---|\n| `fashion_cnn` | x |\n\nafter"
    assert readme_plugin_table(table) == {"fashion_cnn"} != shipped_plugins()


def test_readme_plugin_table_lists_every_shipped_plugin():
    assert readme_plugin_table((ROOT / "README.md").read_text()) == shipped_plugins()


def test_plugins_md_names_check_plugin_where_it_lives():
    from testbed.models.plugin_api import check_plugin

    text = (ROOT / "docs" / "plugins.md").read_text()
    assert f"`{check_plugin.__module__}.{check_plugin.__name__}`" in text


def test_plugins_md_pyproject_installs_the_weights_and_the_entry_point():
    text = (ROOT / "docs" / "plugins.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", text, re.S)
    assert blocks, "docs/plugins.md has no pyproject.toml example"
    project = tomllib.loads(blocks[0])
    assert plugins.ENTRY_POINT_GROUP in project["project"]["entry-points"]
    package = project["tool"]["setuptools"]["packages"][0]
    assert "*.pt" in project["tool"]["setuptools"]["package-data"][package]
