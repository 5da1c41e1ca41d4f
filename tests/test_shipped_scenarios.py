"""Every scenario in scenarios/ is valid as shipped: it loads, its gates parse and name
offloaders it runs, and every offloader it names can be built (its artefacts exist)."""

from __future__ import annotations

import pytest

from testbed import offloaders
from testbed.config.scenario import load_scenario
from testbed.config.sweep import load_sweeps
from testbed.experiment.runner import check_gates, offloader_labels
from testbed.models import plugins
from tests.helpers import MAIN_JOB_OFFLOADERS, ROOT

SCENARIOS = sorted((ROOT / "scenarios").glob("*.yaml"))
_MODELS: dict = {}


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.name)
def test_shipped_scenario_is_complete(path):
    """Every cell of every document, too."""
    for cell in (c for sweep in load_sweeps(path) for c in sweep.cells):
        scenario = cell.scenario
        check_gates(scenario, offloader_labels(scenario.offloaders))
        if scenario.model not in _MODELS:
            plugin = plugins.get(scenario.model)
            _MODELS[scenario.model] = (plugin, plugin.load_model())
        plugin, model = _MODELS[scenario.model]
        for spec in scenario.offloaders:
            offloaders.get(spec.name)(plugin, model, **spec.params)


def test_the_main_job_is_the_mobilenet_scenario():
    main = load_scenario(SCENARIOS[0].parent / "lowbw.yaml")
    assert main.model == "mobilenet_v2"
    assert main.network.uplink.bandwidth_mbps == 1 and main.network.uplink.delay_ms == 20
    names = {spec.name for spec in main.offloaders}
    # DeepCOD and the offloaders the README's main-job table compares it with; the later
    # families (feature codecs, DeepDecision) have scenarios of their own.
    assert names == set(MAIN_JOB_OFFLOADERS)


def test_every_offloader_runs_in_some_shipped_scenario():
    shipped = {
        spec.name
        for path in SCENARIOS
        for sweep in load_sweeps(path)
        for cell in sweep.cells
        for spec in cell.scenario.offloaders
    }
    assert set(offloaders.names()) - shipped == set()
