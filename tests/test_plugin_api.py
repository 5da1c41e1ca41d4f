"""The plugin API: declarations checked against the model, broken plugins named
while the others keep working, and a third-party plugin installed through the
`deepcod_testbed.plugins` entry point into a temporary environment."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from torch import nn

from testbed.errors import PluginError
from testbed.models import plugins
from testbed.models.plugin_api import Dataset, InputSpec, Plugin, check_plugin
from tests.mininet_utils import ROOT, needs_mininet, write_scenario


class Declared(Plugin):
    def __init__(self, stages, **kw):
        defaults = dict(
            name="declared",
            description="test",
            num_classes=10,
            split_points=(1,),
            input_spec=InputSpec((1, 28, 28), "uint8", 0, 255),
        )
        super().__init__(**{**defaults, **kw})
        self._stages = stages

    def build_stages(self):
        return self._stages()

    def test_data(self) -> Dataset:
        raise NotImplementedError

    train_data = test_data


def good():
    return [nn.Flatten(), nn.Linear(784, 10)]


def test_shipped_plugin_passes_and_reports_shapes():
    assert check_plugin(plugins.get("fashion_cnn")) == [(32, 14, 14), (64, 7, 7), (10,)]


@pytest.mark.parametrize(
    "stages, kw, message",
    [
        (
            lambda: [nn.Flatten(), nn.Linear(100, 10)],
            {},
            "stage 1 does not take stage 0's output of shape (1, 784)",
        ),
        (
            lambda: [nn.Linear(5, 10)],
            {"split_points": ()},
            "stage 0 does not take the input 1x28x28 uint8",
        ),
        (
            good,
            {"split_points": (2,)},
            "split_points (2,) must be increasing, each between 1 and 1",
        ),
        (good, {"num_classes": 5}, "expected (5,) logits"),
        (lambda: [], {}, "returned no stages"),
        (good, {"metric": "f1"}, "metric 'f1'"),
    ],
)
def test_bad_declarations_are_named(stages, kw, message):
    with pytest.raises(PluginError, match="declared") as info:
        check_plugin(Declared(stages, **kw))
    assert message in str(info.value)


def test_missing_weights_name_the_fix(tmp_path):
    plugin = Declared(good, artefacts={"weights": tmp_path / "none.pt"})
    with pytest.raises(PluginError, match=r"weights missing at .*none\.pt; train them with"):
        plugin.load_model()


def test_a_broken_plugin_does_not_stop_the_others(monkeypatch):
    def broken():
        raise ImportError("No module named 'missing_dependency'")

    monkeypatch.setattr(plugins, "_third_party", lambda: {"broken": broken})
    with pytest.raises(PluginError, match="plugin 'broken' failed to load: ImportError"):
        plugins.get("broken")
    assert plugins.get("fashion_cnn").name == "fashion_cnn"
    listing = subprocess.run(
        [
            sys.executable,
            "-c",
            "import run_scenario, testbed.models.plugins as p;"
            "p._third_party = lambda: {'broken': lambda: 1 / 0}; run_scenario.list_plugins()",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert (
        "broken           BROKEN: plugin 'broken' failed to load: ZeroDivisionError"
        in listing.stdout
    )
    assert "fashion_cnn      input 1x28x28" in listing.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """tinyplug installed with pip into a folder of its own, put on PYTHONPATH: a
    temporary environment that the project's venv never sees."""
    target = tmp_path_factory.mktemp("site")
    source = tmp_path_factory.mktemp("src") / "tinyplug"  # the build writes beside it
    shutil.copytree(ROOT / "tests" / "data" / "tinyplug", source)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    weights = target / "tiny.pt"
    env = {
        **os.environ,
        "PYTHONPATH": f"{target}{os.pathsep}{ROOT}",
        "TINYPLUG_WEIGHTS": str(weights),
    }
    subprocess.run(
        [sys.executable, "-c", "import tinyplug; tinyplug.train()"], env=env, check=True, cwd=ROOT
    )
    return env


def test_entry_point_plugin_is_listed(installed):
    proc = subprocess.run(
        [sys.executable, "run_scenario.py", "--list-plugins"],
        cwd=ROOT,
        env=installed,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "tiny_fashion     input 1x28x28 uint8" in proc.stdout
    assert "split points (feature shape): 1 (784), 2 (32)" in proc.stdout
    # without the temporary environment it is not there
    plain = subprocess.run(
        [sys.executable, "run_scenario.py", "--list-plugins"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert "tiny_fashion" not in plain.stdout


@needs_mininet
@pytest.mark.mininet
def test_entry_point_plugin_runs_a_scenario(installed, tmp_path):
    import csv

    scenario = write_scenario(tmp_path / "tiny.yaml", model="tiny_fashion", samples=10)
    proc = subprocess.run(
        [
            sys.executable,
            "run_scenario.py",
            str(scenario),
            "--out",
            str(tmp_path / "out"),
            "--no-progress",
            "--skip-fidelity",
        ],
        cwd=ROOT,
        env=installed,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    with open(tmp_path / "out" / "summary.csv") as handle:
        rows = {r["offloader"]: r for r in csv.DictReader(handle)}
    assert rows["raw"]["n"] == "10" and float(rows["local"]["accuracy"]) > 0.5
