"""Rate-accuracy curves: what each offloader's bytes buy in accuracy, as CompressAI plots
rate-distortion, so that codecs are compared over their whole range rather than at the
one setting a scenario picked:

    python -m testbed.experiment.rate_accuracy --plugin mobilenet_v2 [--test-data DIR] [--count N]
        [--offloaders jpeg,deepcod] [--out docs/results/rate_accuracy] [--threads 1]

Every configuration runs on the same samples (the first N of the test set) through the
agents' own code path in one process: the offloader's `device()` gives the payload, its
`edge()` the prediction. A configuration is fixed: `jpeg`/`webp` at each quality of
QUALITIES, `jalad` pinned at each split point and bit width (its device half is run by
the same functions JALAD uses, without its per-request choice), `bottlenet` and
`deepcod` with every artefact beside the plugin's code (the DeepCOD ratios of
DEEPCOD_RATIOS that lack one are reported), `raw` and `local` as single points. Bytes
are what one request puts on the uplink: the payload plus the protocol's frame header,
as `bytes_up` in a scenario's requests.csv (0 for local). The score is the plugin's
metric, as in the scenario reports: top-1 accuracy against the labels, or agreement with
the unmodified model where the plugin has no labels; each configuration's agreement with
the unmodified model (batched on the original samples) is reported beside it.

Outputs in `--out`: points.csv (one row per configuration and sample), curve.csv and
curve.md (one row per configuration, the score with its 95 % Wilson interval) and
rate_accuracy.png (bytes on a log axis; each family's markers, and a line through those
no cheaper configuration of the family beats).
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display

import numpy as np
import torch
from tqdm import tqdm

from testbed import offloaders
from testbed.agents.protocol import HEADER
from testbed.errors import PluginError, ScenarioError, TestbedError
from testbed.experiment.rate_accuracy_report import (
    FAMILIES,
    header_lines,
    markdown,
    plot,
    reference_score,
    score_key,
    summarize,
)
from testbed.models import plugins, predictions
from testbed.offloaders.base import DeviceResult, PhaseTimer, warm_kernels
from testbed.offloaders.jalad import BITS
from testbed.offloaders.split import pack_coded, run_head
from testbed.results.records import write_csv

__all__ = [
    "DEEPCOD_RATIOS",
    "FAMILIES",
    "QUALITIES",
    "Config",
    "configurations",
    "main",
    "run",
    "summarize",
]

QUALITIES = (5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 100)
DEEPCOD_RATIOS = (0.05, 0.1, 0.25)  # the input-side ratios expected beside every plugin
BATCH = 32  # samples per batch of the unmodified model's reference pass
POINT_COLUMNS = [
    "offloader",
    "config",
    "sample",
    "bytes",
    "payload_bytes",
    "prediction",
    "label",
    "correct",
    "agrees",
]
CURVE_COLUMNS = [
    "offloader",
    "config",
    "n",
    "mean_bytes",
    "accuracy",
    "ci_low",
    "ci_high",
    "agreement",
    "drop_pp",
]
_BOTTLENET = re.compile(r"bottlenet-s(\d+)-c(\d+)-b(\d+)(?:-x(\d+))?")
_DEEPCOD = re.compile(r"deepcod-(?:s(\d+)-)?r(\d*\.?\d+)")


@dataclass(frozen=True)
class Config:
    """One point of a curve: an offloader with fixed parameters; `pin` (split, bits)
    replaces an adaptive offloader's per-request choice."""

    offloader: str
    label: str
    params: dict[str, Any] = field(default_factory=dict)
    pin: tuple[int, int] | None = None


# ----------------------------------------------------------------------- configurations


def configurations(plugin, families=FAMILIES) -> tuple[list[Config], list[str]]:
    """The configurations of the asked families, in FAMILIES order, and notes on what is
    missing (DeepCOD ratios without an artefact)."""
    configs, notes = [], []
    for family in FAMILIES:
        if family not in families:
            continue
        if family in ("raw", "local"):
            configs.append(Config(family, family))
        elif family in ("jpeg", "webp"):
            configs += [Config(family, f"{family} q{q}", {"quality": q}) for q in QUALITIES]
        elif family == "jalad":
            configs += [
                Config("jalad", f"jalad s{s} b{b}", pin=(s, b))
                for s in plugin.split_points
                for b in BITS
            ]
        elif family == "bottlenet":
            found = _bottlenet_configs(plugin)
            configs += found
            if not found:
                notes.append("bottlenet: no artefact beside the plugin's code (not measured)")
        else:
            found, missing = _deepcod_configs(plugin)
            configs += found
            if missing:
                ratios = ", ".join(f"r{r:g}" for r in missing)
                notes.append(f"deepcod: no artefact for {ratios} (not measured)")
    return configs, notes


def artefact_keys(plugin) -> list[str]:
    """Names (without .pt) of the artefacts beside the plugin's code and in its
    `artefacts` (where tests redirect them), as `testbed.offloaders.deepcod.train` finds them."""
    folder = Path(sys.modules[type(plugin).__module__].__file__ or ".").resolve().parent
    return sorted({path.stem for path in folder.glob("*.pt")} | set(plugin.artefacts))


def _bottlenet_configs(plugin) -> list[Config]:
    configs = []
    for key in artefact_keys(plugin):
        if match := _BOTTLENET.fullmatch(key):
            split, channels, bits, stride = (int(g or 1) for g in match.groups())
            label = f"bottlenet s{split} c{channels} b{bits}" + (
                f" x{stride}" if stride > 1 else ""
            )
            params = {"split": split, "channels": channels, "bits": bits, "stride": stride}
            configs.append(Config("bottlenet", label, params))
    return configs


def _deepcod_configs(plugin) -> tuple[list[Config], list[float]]:
    """Every DeepCOD artefact, by split then ratio; the DEEPCOD_RATIOS without one."""
    found = []
    for key in artefact_keys(plugin):
        if match := _DEEPCOD.fullmatch(key):
            found.append((int(match[1] or 0), float(match[2])))
    configs = [
        Config("deepcod", f"deepcod{f' s{s}' if s else ''} r{r:g}", {"ratio": r, "split": s})
        for s, r in sorted(found)
    ]
    missing = [r for r in DEEPCOD_RATIOS if (0, r) not in found]
    return configs, missing


# ---------------------------------------------------------------------------- measuring


class HeadCache:
    """stages[:split] of every sample, for one split at a time: JALAD's bit widths at a
    split share the device's model compute, which is most of their cost."""

    def __init__(self, plugin, model, inputs: np.ndarray) -> None:
        self.plugin, self.model, self.inputs = plugin, model, inputs
        self.split: int | None = None
        self.heads: dict[int, np.ndarray] = {}

    def get(self, split: int, index: int) -> np.ndarray:
        if split != self.split:
            self.split, self.heads = split, {}
        if index not in self.heads:
            self.heads[index] = run_head(self.plugin, self.model, self.inputs[index], split)
        return self.heads[index]


def build(config: Config, plugin, model):
    """The offloader of a configuration, prepared as the agents prepare it (a pinned one
    is not: its preparation is the calibration that its pin replaces)."""
    offloader = offloaders.get(config.offloader)(plugin, model, **config.params)
    if config.pin is None:
        offloader.prepare("device")
        offloader.prepare("edge")
    return offloader


def device_half(config: Config, offloader, inputs, index: int, heads: HeadCache) -> DeviceResult:
    if config.pin is None:
        return offloader.device(inputs[index], PhaseTimer())
    split, bits = config.pin  # what JALAD's device() does once it has chosen (split, bits)
    return DeviceResult(payload=pack_coded(split, bits, heads.get(split, index)))


def measure(config: Config, offloader, inputs: np.ndarray, heads: HeadCache) -> list[dict]:
    """One point per sample: bytes on the uplink and the prediction that came back."""
    points = []
    for index in range(len(inputs)):
        sent = device_half(config, offloader, inputs, index, heads)
        if sent.payload is None:
            prediction, size = sent.prediction, 0
        else:
            prediction = offloader.edge(sent.payload, PhaseTimer())
            size = len(sent.payload)
        points.append(
            {
                "offloader": config.offloader,
                "config": config.label,
                "sample": index,
                "bytes": HEADER.size + size if size else 0,
                "payload_bytes": size,
                "prediction": prediction,
            }
        )
    return points


@torch.inference_mode()
def reference(plugin, model, inputs: np.ndarray) -> list:
    """The unmodified model's predictions on the original samples, in batches."""
    found = []
    for start in range(0, len(inputs), BATCH):
        found += predictions.predict(plugin, model(plugin.to_tensor(inputs[start : start + BATCH])))
    return found


def score(points: list[dict], plugin, references: list, labels: np.ndarray) -> None:
    """Add label, correct (empty without a label) and agrees to every point."""
    compare = predictions.comparer(plugin)
    for point in points:
        label = int(labels[point["sample"]])
        prediction = point["prediction"]
        point["label"] = label
        point["correct"] = int(prediction == label) if label >= 0 else ""
        point["agrees"] = int(compare(prediction, references[point["sample"]]).agrees)
        point["prediction"] = predictions.to_record(plugin, prediction)


# ---------------------------------------------------------------------------------- run


def load_inputs(plugin, folder: Path | None, count: int | None):
    """The first `count` samples of the test set (or of the images in `folder`)."""
    data = plugins.test_data(plugin, folder)
    count = len(data) if count is None else min(count, len(data))
    if count == 0:
        raise ScenarioError(f"no test samples for plugin {plugin.name!r}")
    return data.inputs[:count], np.asarray(data.labels[:count])


def run_configs(configs, plugin, model, inputs, notes: list[str], progress: bool) -> list[dict]:
    """Every configuration's points; one that cannot be built is skipped with a note."""
    heads, points = HeadCache(plugin, model, inputs), []
    skipped: dict[tuple[str, str], int] = {}  # (offloader, reason) -> configurations
    warm_kernels({offloaders.get(c.offloader) for c in configs})
    with tqdm(configs, unit="config", disable=not progress, file=sys.stderr) as bar:
        for config in bar:
            bar.set_postfix_str(config.label)
            try:
                offloader = build(config, plugin, model)
            except PluginError as exc:
                key = (config.offloader, str(exc))
                skipped[key] = skipped.get(key, 0) + 1
                continue
            points += measure(config, offloader, inputs, heads)
    notes += [
        f"{name}: {count} configuration(s) skipped: {reason}"
        for (name, reason), count in skipped.items()
    ]
    return points


def run(args: argparse.Namespace, command: str, progress: bool = True) -> list[dict]:
    """Measure, write the outputs into `args.out`, and return the curve's rows."""
    torch.set_num_threads(args.threads)
    plugin = plugins.get(args.plugin)
    model = plugin.load_model()
    inputs, labels = load_inputs(plugin, args.test_data, args.count)
    configs, notes = configurations(plugin, args.offloaders)
    references = reference(plugin, model, inputs)
    points = run_configs(configs, plugin, model, inputs, notes, progress)
    score(points, plugin, references, labels)
    ref = reference_score(plugin, references, labels)
    rows = summarize(points, configs, score_key(plugin), ref)
    source = f"images in {args.test_data}" if args.test_data else "its test set"
    header = header_lines(plugin, len(inputs), ref, notes, command, source)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "points.csv", points, POINT_COLUMNS)
    write_csv(out / "curve.csv", rows, CURVE_COLUMNS)
    (out / "curve.md").write_text(markdown(rows, header))
    plot(rows, out / "rate_accuracy.png", plugin, len(inputs), ref)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    return rows


def families(text: str) -> tuple[str, ...]:
    asked = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in asked if name not in FAMILIES]
    if unknown or not asked:
        raise argparse.ArgumentTypeError(
            f"unknown offloader {', '.join(unknown) or '(none)'}; allowed: {', '.join(FAMILIES)}"
        )
    return asked


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        """Bad input: one line and exit status 2, as a TestbedError's."""
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(ScenarioError.exit_status)


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m testbed.experiment.rate_accuracy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--plugin", required=True)
    p.add_argument(
        "--test-data",
        type=Path,
        metavar="DIR",
        help="a folder of images instead of the plugin's test set",
    )
    p.add_argument("--count", type=int, help="the first N samples only (default: all)")
    p.add_argument(
        "--offloaders",
        type=families,
        default=FAMILIES,
        metavar="A,B",
        help=f"families to measure (default: all of {','.join(FAMILIES)})",
    )
    p.add_argument("--out", type=Path, default=Path("docs/results/rate_accuracy"))
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = parser()
    args = p.parse_args(argv)
    if (args.count is not None and args.count < 1) or args.threads < 1:
        p.error("--count and --threads must be positive")
    command = shlex.join(["python", "-m", "testbed.experiment.rate_accuracy", *argv])
    try:
        rows = run(args, command, progress=True)
    except TestbedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_status
    print((args.out / "curve.md").read_text(), end="")
    print(f"wrote {len(rows)} configurations to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
