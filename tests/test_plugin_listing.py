"""`--list-plugins` names what a plugin lacks: its weights, its DeepCOD networks."""

from __future__ import annotations

from run_scenario import artefact_notes
from testbed.models import plugins
from testbed.models.plugin_api import Dataset, InputSpec, Plugin


class Bare(Plugin):
    def build_stages(self) -> list:
        return []

    def test_data(self) -> Dataset:
        raise NotImplementedError

    def train_data(self) -> Dataset:
        raise NotImplementedError


def bare(artefacts: dict) -> Bare:
    return Bare("bare", "test", InputSpec((1, 4, 4), "uint8", 0, 255), 2, (), artefacts=artefacts)


def test_missing_weights_and_networks_are_named(tmp_path):
    notes = artefact_notes(bare({"weights": tmp_path / "weights.pt"}))
    assert any("MISSING weights" in n and str(tmp_path / "weights.pt") in n for n in notes)
    assert any(
        "MISSING DeepCOD networks" in n and "deepcod.train --plugin bare --ratio 0.1" in n
        for n in notes
    )


def test_present_files_are_listed_without_a_warning(tmp_path):
    for name in ("weights.pt", "deepcod-r0.1.pt"):
        (tmp_path / name).write_bytes(b"")
    plugin = bare(
        {"weights": tmp_path / "weights.pt", "deepcod-r0.1": tmp_path / "deepcod-r0.1.pt"}
    )
    assert plugins.weights_missing(plugin) is None
    assert plugins.trained_artefacts(plugin) == ["deepcod-r0.1"]
    assert artefact_notes(plugin) == ["trained networks: deepcod-r0.1"]


def test_shipped_plugin_lists_its_networks_not_its_resume_states():
    plugin = plugins.get("mobilenet_v2")  # its weights live in an installed package
    trained = plugins.trained_artefacts(plugin)
    assert "deepcod-r0.1" in trained and "weights" not in trained
    assert not any(k.endswith(".resume") for k in trained)  # where training left them
