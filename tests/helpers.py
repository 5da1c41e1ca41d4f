"""What several test modules need alike, written once: the repository's root, a
registered plugin's fixtures and the checks every plugin's model passes, and the edge
agent as a real process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LOCAL = "127.0.0.1"
# the offloaders of the main job (scenarios/lowbw.yaml, the README's table) and of its
# quick fashion_cnn version, in their order
MAIN_JOB_OFFLOADERS = (
    "raw",
    "local",
    "jpeg",
    "webp",
    "neurosurgeon",
    "jalad",
    "bottlenet",
    "deepcod",
)


def plugin_fixtures(name: str):
    """Module-scoped fixtures `plugin` (the registered plugin `name`) and `test_data` (its
    test set), for a test module to bind: `plugin, test_data = plugin_fixtures("imu_har")`."""
    from testbed.models import plugins

    @pytest.fixture(scope="module")
    def plugin():
        return plugins.get(name)

    @pytest.fixture(scope="module")
    def test_data(plugin):
        return plugin.test_data()

    return plugin, test_data


def loaded(name: str) -> tuple:
    """The registered plugin `name`, its trained model and its test set."""
    from testbed.models import plugins

    plugin = plugins.get(name)
    return plugin, plugin.load_model(), plugin.test_data()


def stage_outputs(plugin, stages: list, raw) -> list:
    """Each stage's output (eval mode) on the batch `raw`, after checking what offloaders
    rely on: the stages one after the other give what the whole model gives."""
    import torch

    x = plugin.to_tensor(raw)
    outputs = []
    with torch.inference_mode():
        for stage in stages:
            stage.eval()
            x = stage(x)
            outputs.append(x)
        whole = torch.nn.Sequential(*stages)(plugin.to_tensor(raw))
        assert torch.equal(whole, outputs[-1])
    return outputs


def check_trained_weights(plugin, max_bytes: int) -> None:
    """The committed weights: a small file of tensors only, loaded into the stages in eval
    mode."""
    import torch

    path = plugin.artefacts["weights"]
    assert path.is_file() and path.stat().st_size < max_bytes
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert all(isinstance(t, torch.Tensor) for t in state.values())
    model = plugin.load_model()
    assert isinstance(model, torch.nn.Sequential) and not model.training
    assert len(model) == len(plugin.build_stages())


def start_edge(stderr=subprocess.DEVNULL, *extra: str) -> tuple[subprocess.Popen, int]:
    """The edge agent as a real process on a free loopback port, fashion_cnn preloaded,
    once it has said READY; its port. With `stderr=subprocess.PIPE` a failed start shows
    the agent's error; `extra` are more options (its limits)."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "testbed.agents.edge",
            "--host",
            LOCAL,
            "--port",
            "0",
            "--preload",
            "fashion_cnn",
            "--threads",
            "1",
            *extra,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=stderr,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    assert line.startswith("READY"), proc.stderr.read().decode() if proc.stderr else line
    return proc, int(line.split()[1])
