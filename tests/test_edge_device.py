"""The edge's device (scenario `edge: {device:}`, docs/edge.md): every offloader's edge
half placed where its networks are, timing synchronised with the GPU, the choice checked
before anything starts. Without a GPU, the meta device stands in for one: a dispatch mode
fails any op that mixes it with CPU tensors, as CUDA would."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from testbed import offloaders
from testbed.config.scenario import load_scenario
from testbed.errors import EnvironmentMissing, ScenarioError
from testbed.experiment import environment
from testbed.offloaders.base import EdgeDevice, PhaseTimer, resolve_edge_device
from testbed.offloaders.split import pack_coded, pack_features, run_head
from tests.helpers import ROOT

CUDA = torch.cuda.is_available()


SCALAR_READS = (torch.ops.aten.item.default, torch.ops.aten._local_scalar_dense.default)


class OneDevice(TorchDispatchMode):
    """Fails an op whose tensors (beyond scalars) sit on different devices, and counts
    the ops that ran on the meta device. A meta tensor has no value to read (`.item()`,
    which a GPU answers): 1 stands in."""

    def __init__(self) -> None:
        super().__init__()
        self.on_meta = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [
            t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor) and t.dim()
        ]
        devices = {t.device.type for t in tensors}
        assert len(devices) <= 1, f"{func} mixes tensors on {sorted(devices)}"
        self.on_meta += devices == {"meta"}
        if func in SCALAR_READS and args[0].is_meta:
            return 1
        return func(*args, **kwargs)


def payload_of(name: str, plugin, model, sample: np.ndarray) -> tuple[dict, bytes | None]:
    """(parameters, a payload the device half would send) for each offloader, made on the
    CPU without calibrations (a pinned quality, split and bits)."""
    split = plugin.split_points[-1]
    features = run_head(plugin, model, sample, split)
    params: dict = {}
    half: Any
    if name == "neurosurgeon":
        return params, pack_features(split, features)
    if name == "jalad":
        return params, pack_coded(split, 4, features)
    if name in ("jpeg", "webp"):
        params = {"quality": 50}
    if name in ("feature_png", "feature_jpeg"):
        params = {"split": split, **({"quality": 50} if name == "feature_jpeg" else {})}
        half = offloaders.get(name)(plugin, model, **params)
        return params, half.encode(split, features, params.get("quality"))
    half = offloaders.get(name)(plugin, model, **params)
    if name == "deepdecision":
        return params, half.encode(sample, 1.0, 75)
    return params, half.device(sample, PhaseTimer()).payload


@pytest.fixture
def meta_edge():
    EdgeDevice.set("meta")
    try:
        yield EdgeDevice.torch()
    finally:
        EdgeDevice.set("cpu")


EDGE_HALVES = [n for n in offloaders.names() if n != "local"]  # local sends nothing


@pytest.mark.parametrize("name", EDGE_HALVES)
def test_every_edge_half_runs_on_the_edge_device(name, fashion, meta_edge):
    """As the edge agent does: the model placed, the half built, placed, prepared (its
    profiles), then a real payload decoded and run: every op on one device."""
    plugin, model, data = fashion
    params, payload = payload_of(name, plugin, model, data.inputs[0])
    assert payload
    placed = plugin.load_model().to(meta_edge)
    half = offloaders.get(name)(plugin, placed, **params)
    half.place(meta_edge)
    with OneDevice() as mode:
        half.prepare("edge")
        prediction = half.edge(payload, PhaseTimer())
    assert mode.on_meta > 0  # the networks ran on the edge's device, not beside it
    assert isinstance(prediction, int)  # through `predictions`, in host memory


# mtcnn_faces' detector has data-dependent ops (nonzero) the meta device cannot run
PLUGIN_MODELS = ["fashion_cnn", "mobilenet_v2", "speech_kws", "imu_har"]


@pytest.mark.parametrize("name", PLUGIN_MODELS)
def test_each_plugins_model_runs_on_the_edge_device(name, meta_edge):
    """The whole model as `raw` runs it at the edge, for each plugin: a plugin whose
    stages make tensors of their own must make them where its weights are."""
    from testbed.models import plugins

    plugin = plugins.get(name)
    spec = plugin.input_spec
    rng = np.random.default_rng(0)
    sample = rng.uniform(spec.low, spec.high, spec.shape).astype(spec.dtype)
    half = offloaders.get("raw")(plugin, plugin.load_model().to(meta_edge))
    with OneDevice() as mode:
        half.edge(np.ascontiguousarray(sample).tobytes(), PhaseTimer())
    assert mode.on_meta > 0


def test_a_missed_placement_is_caught(fashion, meta_edge):
    """The check above can fail: an input left on the CPU meets the meta model."""
    plugin, _, data = fashion
    placed = plugin.load_model().to(meta_edge)
    with OneDevice(), pytest.raises(AssertionError, match="mixes"):
        placed(plugin.to_tensor(data.inputs[:1]))


def test_phases_wait_for_the_gpu(monkeypatch):
    """On cuda every timed phase synchronises before it starts and before it ends (the
    kernels run asynchronously); on the CPU it never calls into CUDA."""
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: calls.append("sync"))
    timer = PhaseTimer()
    with timer.phase("decode"):
        calls.append("work")
    assert calls == ["work"]
    monkeypatch.setattr(EdgeDevice, "name", "cuda")
    with timer.phase("edge"):
        calls.append("work")
    assert calls == ["work", "sync", "work", "sync"]


def test_auto_resolves_to_what_this_machine_has():
    assert resolve_edge_device("cpu") == "cpu"
    assert resolve_edge_device("auto") == ("cuda" if CUDA else "cpu")
    record = environment.edge_device("auto", resolve_edge_device("auto"))
    assert record["requested"] == "auto" and record["device"] == ("cuda" if CUDA else "cpu")
    assert record["torch_cuda"] == torch.version.cuda


@pytest.mark.skipif(CUDA, reason="this machine has a GPU: cuda is no error here")
def test_cuda_without_a_gpu_says_why():
    with pytest.raises(EnvironmentMissing) as raised:
        resolve_edge_device("cuda")
    assert raised.value.exit_status == 3
    assert "CPU-only build" in str(raised.value) or "sees no GPU" in str(raised.value)
    with pytest.raises(ScenarioError):
        resolve_edge_device("gpu")


@pytest.mark.skipif(CUDA, reason="this machine has a GPU: cuda is no error here")
def test_edge_agent_refuses_cuda_without_a_gpu():
    proc = subprocess.run(
        [sys.executable, "-m", "testbed.agents.edge", "--port", "0", "--device", "cuda"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 3 and "READY" not in proc.stdout
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("edge agent: edge.device is cuda, but "), proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.skipif(CUDA, reason="this machine has a GPU: cuda is no error here")
def test_the_check_refuses_cuda_without_a_gpu(tmp_path):
    """`--check` tells what the run would: exit 3 and why, the file named."""
    path = tmp_path / "s.yaml"
    path.write_text(
        "model: fashion_cnn\nsamples: 2\nnetwork: {uplink: {bandwidth_mbps: 1}}\n"
        "edge: {device: cuda}\noffloaders: [raw]\n"
    )
    proc = subprocess.run(
        [sys.executable, "run_scenario.py", "--check", "--loopback", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 3, proc.stderr
    assert f"{path}: edge.device is cuda" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("edge: {device: gpu}", ["s.yaml:3: edge.device: got 'gpu'", "write cuda"]),
        ("edge: {device: CUDA}", ["s.yaml:3: edge.device: got 'CUDA'", "cpu, cuda, auto"]),
        ("edge: {device: 1}", ["edge.device: got 1; allowed: one of cpu, cuda, auto"]),
        ("edge: {devise: cuda}", ["edge.devise: unknown key; allowed: cpu, device"]),
    ],
)
def test_bad_edge_devices_are_named_with_their_line(tmp_path, text, expected):
    path = tmp_path / "s.yaml"
    path.write_text("model: fashion_cnn\nnetwork: {uplink: {bandwidth_mbps: 1}}\n" + text + "\n")
    with pytest.raises(ScenarioError) as raised:
        load_scenario(path)
    for part in expected:
        assert part in str(raised.value)


def test_the_edge_device_is_kept_in_the_resolved_scenario(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("model: fashion_cnn\nnetwork: {uplink: {bandwidth_mbps: 1}}\n")
    plain = load_scenario(path)
    assert plain.edge.device == "cpu" and "device" not in plain.to_dict()["edge"]
    path.write_text(path.read_text() + "edge: {device: auto}\n")
    auto = load_scenario(path)
    assert auto.edge.device == "auto" and auto.to_dict()["edge"]["device"] == "auto"
    assert auto != plain


def test_gpu_details_come_from_nvidia_smi(tmp_path, monkeypatch):
    """The driver, name and memory as nvidia-smi reports them (a stand-in here)."""
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'NVIDIA H200, 143771, 570.86.15'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert environment._nvidia_smi() == {
        "gpu": "NVIDIA H200",
        "memory_mib": 143771,
        "driver": "570.86.15",
    }
    fake.write_text("#!/bin/sh\nexit 9\n")
    assert environment._nvidia_smi() == {}


@pytest.mark.skipif(not CUDA, reason="no CUDA device here (torch.cuda.is_available() is False)")
def test_a_loopback_run_on_the_gpu(tmp_path):
    """The whole path on the GPU: the edge agent told cuda, environment.json says which."""
    path = tmp_path / "gpu.yaml"
    path.write_text(
        "model: fashion_cnn\nsamples: 10\nedge: {device: cuda}\n"
        "network: {uplink: {bandwidth_mbps: 1}}\noffloaders: [raw, jpeg, bottlenet]\n"
    )
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "run_scenario.py", path, "--loopback", "--out", out, "--no-progress"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    env = json.loads((out / "environment.json").read_text())
    assert env["edge_device"]["device"] == "cuda" and env["edge_device"].get("gpu")
    assert "on cuda" in (out / "logs" / "edge.log").read_text()
