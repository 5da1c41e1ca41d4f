"""Accuracy and size of an offloader's options, measured once and cached.

An adaptive offloader must know, before it runs, what each option (a JPEG quality,
a split with k-bit features) costs in accuracy and in bytes. That is measured here on
a calibration set drawn from the plugin's *train* split (never the test samples the
scenario is scored on; a plugin without one may name another in `calibration_data`,
and says so): the option's predictions against the labels (or, for plugins without
labels, against the unsplit model; for a detector, image-level box agreement,
`testbed.models.predictions`), as a drop in percentage points from the unsplit model on the
same samples, and its mean payload size.

The runner calibrates at full speed before the hosts start; the results go to the
testbed cache, keyed by everything they depend on (the model's weights, the option,
the calibration set), so the CPU-limited device agent only reads them.

Calibration also ships with a plugin: `plugins/<name>/calibration/` holds files of the
same name and format as the cache's (the name carries the key's digest), read when the
cache lacks an option, so a fresh clone's first run measures nothing its plugin
shipped. A changed key (weights, metric, codec library, sample count, VERSION) names
another file, so a stale shipped file is simply not found and the options are measured.
They are written by

    python -m testbed.offloaders.calibration --plugin mobilenet_v2 \
        --offloaders jpeg,webp,jalad --samples 100 --ship

which calibrates (or reads the cache), then copies what was used into the plugin.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from testbed.errors import TestbedError
from testbed.models import predictions
from testbed.models.cache import cache_dir
from testbed.offloaders.params import Param

# Bump when what is scored changes (2: mobilenet_v2 moved to labelled ImageNet photos and
# scores accuracy); the plugin's metric is in the key as well.
VERSION = 2
BATCH = 32


def max_drop(allowed: str) -> Param:
    """The `max_drop_pp` parameter of an offloader that calibrates: the accuracy points
    its options may lose, a finite number >= 0 (default 1); `allowed` says it its way."""
    return Param(float, 1.0, allowed, lambda v: 0 <= v < math.inf)


@dataclass(frozen=True)
class Score:
    drop_pp: float  # points below the unsplit model on the calibration set
    mean_bytes: float

    def option(self, bound: float, **choice: Any) -> dict[str, Any]:
        """A calibrated option as the offloaders list it (`calibrate()`, `describe()`):
        what was chosen, its drop and mean size, and whether the drop is within `bound`."""
        return {
            **choice,
            "drop_pp": self.drop_pp,
            "mean_bytes": round(self.mean_bytes, 1),
            "within_bound": self.drop_pp <= bound,
        }


def file_digest(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def shipped_dir(plugin) -> Path:
    """Where a plugin ships its calibration: `calibration/` beside the plugin's code."""
    module = sys.modules[type(plugin).__module__]
    return Path(module.__file__ or ".").resolve().parent / "calibration"


def _read_scores(path: Path) -> dict[str, Score]:
    """The scores of a calibration file; none for a missing or damaged one (measured again)."""
    if not path.is_file():
        return {}
    try:
        saved = json.loads(path.read_text())
        return {k: Score(**v) for k, v in saved["scores"].items()}
    except (ValueError, KeyError, TypeError):
        return {}


class Calibrator:
    """Scores options of one family (`jpeg`, `jalad`...) for one plugin and model.

    `run(option, inputs)` takes a batch of raw inputs and returns (logits, payload
    sizes); `identity` names whatever else the scores depend on (an artefact's digest).
    """

    # while `ship()` runs: the calibrators made, to copy what they used (None otherwise,
    # so that a long process, a sweep, keeps no models or calibration sets alive)
    opened: ClassVar[list[Calibrator] | None] = None

    def __init__(
        self, plugin, model, family: str, run: Callable, count: int = 200, identity: str = ""
    ) -> None:
        self.plugin, self.model, self.run = plugin, model, run
        weights = plugin.artefacts.get("weights")
        self.key = [
            VERSION,
            plugin.name,
            plugin.metric,
            family,
            count,
            identity,
            file_digest(weights) if weights else "",
        ]
        digest = hashlib.sha256(json.dumps(self.key).encode()).hexdigest()[:16]
        self.path = cache_dir("calibration") / f"{plugin.name}-{family}-{digest}.json"
        self.shipped = shipped_dir(plugin) / self.path.name
        self.count = count
        # the user's cache wins over what the plugin shipped (same key: the same scores)
        self._scores = {**_read_scores(self.shipped), **_read_scores(self.path)}
        self._data = None
        if Calibrator.opened is not None:
            Calibrator.opened.append(self)

    def _calibration_set(self):
        """The first `count` of a seeded permutation of the calibration split (the
        train split, unless the plugin says otherwise), what each is compared with (its
        label, or the unsplit model's prediction), and the unsplit model's score there."""
        if self._data is None:
            data = self.plugin.calibration_data()
            order = np.random.default_rng(0).permutation(len(data))[: self.count]
            inputs, labels = data.inputs[order], data.labels[order]
            run = lambda x: (self.model(self.plugin.to_tensor(x)), [])  # noqa: E731
            reference = self._predict(run, inputs)[0]
            truth = labels.tolist() if self.plugin.metric == "accuracy" else reference
            self._data = (inputs, truth, self._agreement(reference, truth))
        return self._data

    def _agreement(self, found: list, truth: list) -> float:
        """The share of predictions that agree with the truth (`predictions.compare`:
        equality for a classifier, all boxes matched for a detector)."""
        compare = predictions.comparer(self.plugin)
        return float(np.mean([compare(p, t).agrees for p, t in zip(found, truth, strict=True)]))

    @torch.inference_mode()
    def _predict(self, run, inputs) -> tuple[list, list[int]]:
        found, sizes = [], []
        for start in range(0, len(inputs), BATCH):
            output, batch_sizes = run(inputs[start : start + BATCH])
            found += [
                predictions.to_record(self.plugin, p)
                for p in predictions.predict(self.plugin, output)
            ]
            sizes += list(batch_sizes)
        return found, sizes

    def score(self, option: Hashable) -> Score:
        key = json.dumps(option)
        if key not in self._scores:
            inputs, truth, reference_score = self._calibration_set()
            found, sizes = self._predict(lambda x: self.run(option, x), inputs)
            drop = 100 * (reference_score - self._agreement(found, truth))
            self._scores[key] = Score(round(drop, 4), float(np.mean(sizes)) if sizes else 0.0)
            self._save()
        return self._scores[key]

    def lowest(self, options: list, max_drop_pp: float):
        """The first option (in the order given, cheapest first) within the bound, and
        its score; the last option and its score when none is. A bisection: the options
        are ordered by fidelity, so the drop falls along them (up to the calibration
        set's noise), and 20 JPEG qualities cost 5 measurements instead of up to 20."""
        last = self.score(options[-1])
        if last.drop_pp > max_drop_pp:
            return options[-1], last
        lo, hi = 0, len(options) - 1  # options[hi] is within the bound
        while lo < hi:
            mid = (lo + hi) // 2
            if self.score(options[mid]).drop_pp <= max_drop_pp:
                hi = mid
            else:
                lo = mid + 1
        return options[lo], self.score(options[lo])

    def _save(self) -> None:
        self.write(self.path)

    def write(self, path: Path) -> None:
        """The scores so far, and the key they belong to, to `path` (atomically)."""
        tmp = path.with_name(path.name + f".{id(self)}.tmp")
        scores = {k: vars(v) for k, v in self._scores.items()}
        saved = {"plugin": self.plugin.name, "key": self.key, "scores": scores}
        tmp.write_text(json.dumps(saved, indent=1) + "\n")
        Path(tmp).replace(path)


def ship(plugin_name: str, names: list[str], params: dict[str, Any]) -> list[Path]:
    """Calibrate the offloaders `names` of a plugin (reading the cache where it can) and
    write what they used to the plugin's `calibration/` folder; the files written."""
    from testbed import offloaders  # imported here: the offloaders import this module
    from testbed.models import plugins

    plugin = plugins.get(plugin_name)
    model = plugin.load_model()
    opened: list[Calibrator] = []
    Calibrator.opened = opened
    try:
        for name in names:
            cls = offloaders.get(name)
            accepted = {k: v for k, v in params.items() if k in cls.params}
            cls(plugin, model, **offloaders.validate_params(name, accepted)).calibrate()
    finally:
        Calibrator.opened = None
    written = []
    for calibrator in opened:
        if calibrator._scores:
            calibrator.shipped.parent.mkdir(exist_ok=True)
            calibrator.write(calibrator.shipped)
            written.append(calibrator.shipped)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m testbed.offloaders.calibration",
        description="Calibrate offloaders of a plugin and ship the results with the plugin.",
    )
    parser.add_argument("--plugin", required=True, help="the plugin, e.g. mobilenet_v2")
    parser.add_argument("--offloaders", required=True, help="comma-separated, e.g. jpeg,jalad")
    parser.add_argument("--samples", type=int, help="calibration_samples (the scenario's)")
    parser.add_argument("--max-drop", type=float, help="max_drop_pp (the scenario's)")
    parser.add_argument(
        "--ship", action="store_true", help="write to plugins/<plugin>/calibration/"
    )
    args = parser.parse_args(argv)
    params: dict[str, Any] = {}
    if args.samples is not None:
        params["calibration_samples"] = args.samples
    if args.max_drop is not None:
        params["max_drop_pp"] = args.max_drop
    names = [n.strip() for n in args.offloaders.split(",") if n.strip()]
    if not args.ship:
        parser.error("nothing to do without --ship")
    try:
        written = ship(args.plugin, names, params)
    except KeyError as missing:  # an unknown plugin or offloader
        parser.error(f"unknown plugin or offloader: {missing}")
    except TestbedError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_status
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    # the imported module's main: the offloaders' Calibrator is that module's, not __main__'s
    from testbed.offloaders.calibration import main as imported_main

    sys.exit(imported_main())
