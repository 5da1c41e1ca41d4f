"""The offloader interface: one class per offloading family, registered by name.

An offloader splits one request into a device half and an edge half. The device
half returns either a final prediction (nothing offloaded) or a payload for the
edge; the edge half turns that payload into a prediction. Both halves report
their phases to a `PhaseTimer`, so the agents never need to know the family.
"""

from __future__ import annotations

import copy
import threading
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from testbed.models import predictions
from testbed.offloaders.params import Param, check_params


class DeviceClock:
    """The emulated device's speed (scenario `device: {cpu_mode: dilate}`): this process
    runs at full speed and every piece of device work, timed in `dilated()`, is stretched
    by sleeping until its wall time is its own CPU time / `share`. A CFS quota instead
    runs at full speed then stops the process at a scheduler tick, so short work is
    either unslowed or delayed by whole ticks; dilation slows every instruction alike and
    the process still uses no more than `share` of a core (it sleeps the rest).

    Process-wide and off (`share` None) unless the device agent sets it: the edge, the
    runner and tests time plain wall time."""

    share: float | None = None
    # a thread's own CPU time: the work's, not a receiver thread's; with several torch
    # threads (a device of 2+ cores) the whole process's, as their work is the device's
    cpu_ns: Callable[[], int] = time.thread_time_ns

    @classmethod
    def set(cls, share: float | None, threads: int = 1) -> None:
        if share is not None and share <= 0:
            raise ValueError(f"a device's CPU share must be > 0, not {share}")
        cls.share = share
        cls.cpu_ns = time.thread_time_ns if threads <= 1 else time.process_time_ns


EDGE_DEVICES = ("cpu", "cuda", "auto")  # scenario `edge: {device:}` (docs/edge.md)


class EdgeDevice:
    """Where this process runs edge halves: "cpu", or "cuda" where the edge agent was told
    so (scenario `edge: {device:}`, docs/edge.md). Process-wide, like DeviceClock, and set
    once by the edge agent before it loads a model; the runner, the device agent and most
    tests keep "cpu", where placing a tensor costs nothing. Tests may set "meta", a device
    that checks placement (an op mixing it with CPU tensors fails, as with cuda) on
    machines without a GPU."""

    name: str = "cpu"

    @classmethod
    def set(cls, name: str) -> None:
        cls.name = name

    @classmethod
    def torch(cls):
        import torch

        return torch.device(cls.name)


def cuda_missing() -> str:
    """Why this machine cannot run the edge on CUDA ("" where it can)."""
    import torch

    if torch.version.cuda is None:
        return f"this torch ({torch.__version__}) is a CPU-only build"
    if not torch.cuda.is_available():
        return (
            f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU: no driver, "
            "no device, or CUDA_VISIBLE_DEVICES hides it"
        )
    return ""


def resolve_edge_device(requested: str) -> str:
    """`cpu`, `cuda` or `auto` -> the device the edge runs on: `auto` is cuda where a GPU
    is usable, else cpu. `cuda` without one is an environment to fix (exit 3), said
    before anything starts."""
    from testbed.errors import EnvironmentMissing, ScenarioError

    if requested not in EDGE_DEVICES:
        raise ScenarioError(f"edge device: got {requested!r}; allowed: {', '.join(EDGE_DEVICES)}")
    if requested == "cpu":
        return "cpu"
    why = cuda_missing()
    if requested == "auto":
        return "cpu" if why else "cuda"
    if why:
        raise EnvironmentMissing(
            f"edge.device is cuda, but {why}; use `edge: {{device: cpu}}` (or auto, which "
            "falls back to the CPU)"
        )
    return "cuda"


def to_edge(x):
    """A tensor (or numpy array) on the edge's device, for an edge half's networks: a
    payload's tensors are placed at decode. No copy where it is already there (the CPU)."""
    import torch

    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    return x.to(EdgeDevice.name)


def to_host(output):
    """A model's output (a tensor, or tuples, lists and dicts of them) in host memory, for
    `predictions` (numpy, .item()). A meta tensor (tests) has no values: zeros of its
    shape stand in."""
    import torch

    if isinstance(output, torch.Tensor):
        if output.device.type == "cpu":
            return output
        if output.is_meta:
            return torch.zeros(output.shape, dtype=output.dtype)
        return output.cpu()
    if isinstance(output, tuple | list):
        return type(output)(to_host(o) for o in output)
    if isinstance(output, dict):
        return {k: to_host(v) for k, v in output.items()}
    return output


def synchronize() -> None:
    """Wait for the work queued on the edge's GPU: CUDA runs asynchronously, so a phase
    timed without it would end before its kernels do."""
    if EdgeDevice.name == "cuda":
        import torch

        torch.cuda.synchronize()


def dilated_ns(cpu_ns: int, wall_ns: int, share: float | None) -> int:
    """The wall time a piece of work takes on the emulated device: its CPU time / share,
    or its own wall time where that is longer (it waited on something besides the CPU)."""
    if share is None:
        return wall_ns
    return max(wall_ns, round(cpu_ns / share))


@dataclass
class Took:
    """What `dilated()` measured: the work's (dilated) wall milliseconds, set on exit."""

    ms: float = 0.0


_nesting = threading.local()  # an outer dilated() already accounts for inner work


@contextmanager
def dilated() -> Iterator[Took]:
    """Time device work as the emulated device runs it (`DeviceClock`): requests'
    `device` and `encode` phases and every device-side profile that decisions rely on use
    this one clock, so predictions and requests see the same speed. Nested uses are
    timed, not stretched again."""
    took = Took()
    share = DeviceClock.share
    outer = share is not None and not getattr(_nesting, "active", False)
    clock = DeviceClock.cpu_ns
    synchronize()  # on a GPU, work queued before is not this work's
    start, cpu_start = time.monotonic_ns(), clock()
    if outer:
        _nesting.active = True
    try:
        yield took
        synchronize()  # on a GPU, this work ends when its kernels do
    finally:
        if outer:
            _nesting.active = False
            now = time.monotonic_ns()
            wake = start + dilated_ns(clock() - cpu_start, now - start, share)
            if wake > now:
                time.sleep((wake - now) / 1e9)
        took.ms = (time.monotonic_ns() - start) / 1e6


def median_ms(work: Callable[[], Any], repeats: int = 3) -> float:
    """The median of `repeats` runs of `work` after one warm-up, each timed by `dilated()`:
    the profiles adaptive offloaders predict from, at the speed their requests run."""
    work()  # warm-up
    runs = []
    for _ in range(repeats):
        with dilated() as took:
            work()
        runs.append(took.ms)
    return float(np.median(runs))


def model_ms(plugin, model, sample: np.ndarray, repeats: int = 5) -> float:
    """The whole model on one input as one unit, as a request runs it (on the edge's
    device at the edge): timing stage by stage and adding up medians would add each
    stage's throttling noise under a CPU limit."""
    import torch

    @torch.inference_mode()
    def run() -> None:
        model(to_edge(plugin.to_tensor(sample[None])))

    return median_ms(run, repeats)


_MEASURED: weakref.WeakKeyDictionary[Any, dict[Hashable, Any]] = weakref.WeakKeyDictionary()
_MEASURING = threading.Lock()


def measured_once(model, key: Hashable, measure: Callable[[], Any]) -> Any:
    """`measure()` the first time `key` is asked of this model object in this process (at
    this `DeviceClock` speed), a copy of that result after: an edge agent that builds many
    offloaders of one plugin (a HELLO may name dozens) profiles its model once, not once
    per offloader. One lock: concurrent HELLOs neither repeat the work nor disturb each
    other's timings."""
    key = (key, DeviceClock.share)
    with _MEASURING:
        done = _MEASURED.setdefault(model, {})
        if key not in done:
            done[key] = measure()
        return copy.deepcopy(done[key])


class PhaseTimer:
    """Accumulates named phases in milliseconds on CLOCK_MONOTONIC (shared by all hosts),
    each timed by `dilated()` (plain wall time except on a dilated device)."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        took = Took()
        try:
            with dilated() as took:
                yield
        finally:
            self.ms[name] = self.ms.get(name, 0.0) + took.ms


@dataclass
class DeviceResult:
    """What the device half produced: a payload to send, or a final prediction; `choice`
    says what an adaptive offloader chose for this request (split, bits...), recorded."""

    payload: bytes | None = None
    prediction: Any = None  # testbed.models.predictions: an int for a classifier
    choice: dict[str, Any] | None = None


class Offloader(ABC):
    name: ClassVar[str]
    description: ClassVar[str]
    params: ClassVar[dict[str, Param]] = {}
    # True where the offloader calls the Numba kernels: the runner then compiles them
    # into the on-disk cache before the hosts start, and the agents load them at start,
    # so no request pays for compilation (see kernels/warmup.py)
    uses_kernels: ClassVar[bool] = False
    # the plugin tasks (testbed.models.predictions) it works with: those that split the model,
    # code its features or are trained per plugin assume a classifier's logits
    tasks: ClassVar[tuple[str, ...]] = ("classification",)
    # place in listings (`offloaders.names()`, --list-offloaders) among the shipped ones;
    # third-party offloaders follow them, by name
    order: ClassVar[int] = 1000
    # "proposed" (the offloader under study: DeepCOD) or "baseline": the runner records it
    # per label (environment.json `roles`), and the report and summary.md compare each
    # proposed offloader with every baseline at matched accuracy (testbed.results.roles)
    role: ClassVar[str] = "baseline"

    def __init__(self, plugin, model, **params) -> None:
        # the one parameter check (testbed.offloaders.params): the scenario schema and the
        # edge agent's HELLO call it too, and checking its own output again changes nothing
        self.config = check_params(self.name, self.params, params)
        task = predictions.task_name(plugin)
        if task not in self.tasks:
            from testbed import offloaders
            from testbed.errors import PluginError

            fit = [n for n in offloaders.names() if task in offloaders.get(n).tasks]
            raise PluginError(
                f"offloader {self.name!r} works with {' and '.join(self.tasks)} plugins "
                f"only (it splits the model, codes its features or is trained on logits); "
                f"plugin {plugin.name!r} is a {task} plugin: use {', '.join(fit) or 'none'}"
            )
        self.plugin = plugin
        self.model = model  # torch Sequential of the plugin's stages, eval mode

    @abstractmethod
    def device(self, sample: np.ndarray, timer: PhaseTimer) -> DeviceResult:
        """Device half: phases `device` (model compute) and `encode`."""

    def run_whole_model(
        self, sample: np.ndarray, timer: PhaseTimer, choice: dict[str, Any]
    ) -> DeviceResult:
        """An adaptive offloader's local option: the whole model on the device (phase
        `device`), its prediction the result."""
        import torch

        with timer.phase("device"), torch.inference_mode():
            logits = self.model(self.plugin.to_tensor(sample[None]))
        return DeviceResult(prediction=predictions.predict(self.plugin, logits)[0], choice=choice)

    def edge(self, payload: bytes, timer: PhaseTimer) -> Any:
        """Edge half: phases `decode` and `edge`. Raise ValueError on a malformed payload."""
        raise NotImplementedError(f"{self.name} sends nothing to the edge")

    def place(self, device) -> None:
        """Move the networks this edge half holds of its own (every torch module but the
        plugin's model: a learned decoder, a bottleneck) to `device`; the edge agent calls
        it once, before `prepare("edge")`, and places the model itself, which every
        offloader of the plugin shares. An offloader holding bare tensors for its edge
        half overrides it."""
        import torch

        for value in vars(self).values():
            if isinstance(value, torch.nn.Module) and value is not self.model:
                value.to(device)

    def max_payload(self) -> int:
        """The longest REQUEST payload, in bytes, that this offloader's edge half accepts,
        from its plugin's shapes alone: the edge agent refuses a longer frame from its
        header, before it reads or stores a byte of it (docs/design.md, "Limits").

        This default allows the input or any stage's output as float32, plus 64 KiB for
        headers; an offloader whose format has a tighter bound (an image, a coded feature
        map) states that one instead."""
        from testbed.offloaders.split import stage_shapes

        shapes = [tuple(self.plugin.input_spec.shape), *stage_shapes(self.plugin)]
        largest = max(int(np.prod(shape)) for shape in shapes)
        return 4 * largest + 64 * 1024

    def calibrate(self) -> list[dict[str, Any]] | None:
        """Measure what the device half's choices cost in accuracy and bytes
        (`testbed.offloaders.calibration`, cached on disk), and return those options. The
        runner calls it at full speed before the hosts start, so that the device's own call
        only reads the cache."""
        return None  # most offloaders have nothing to calibrate

    def prepare(self, side: str) -> None:
        """Measurements that belong to the host running this half (`side` is "device"
        or "edge"): stage profiling, then calibration on the device. The agents call it
        once after construction; the runner, which constructs offloaders to check their
        artefacts, does not."""
        if side == "device":
            self.calibrate()

    def connect(self, edge: dict[str, Any], link) -> None:
        """Device half only, after HELLO: `edge` is the edge half's `describe()` (e.g. its
        profile), `link` the run's `testbed.offloaders.link_estimate.LinkEstimate`."""
        return None  # only adaptive offloaders use them

    def describe(self) -> dict[str, Any]:
        """What this instance used (split, bits, quality...), recorded with the results."""
        return dict(self.config)


def warm_kernels(offloader_classes) -> float | None:
    """Compile or load the kernels if any of these offloaders needs them; seconds taken."""
    if not any(cls.uses_kernels for cls in offloader_classes):
        return None
    from kernels.warmup import warmup

    return warmup()
