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
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

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


class Calibrator:
    """Scores options of one family (`jpeg`, `jalad`...) for one plugin and model.

    `run(option, inputs)` takes a batch of raw inputs and returns (logits, payload
    sizes); `identity` names whatever else the scores depend on (an artefact's digest).
    """

    def __init__(
        self, plugin, model, family: str, run: Callable, count: int = 200, identity: str = ""
    ) -> None:
        self.plugin, self.model, self.run = plugin, model, run
        weights = plugin.artefacts.get("weights")
        key = json.dumps(
            [
                VERSION,
                plugin.name,
                plugin.metric,
                family,
                count,
                identity,
                file_digest(weights) if weights else "",
            ]
        )
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        self.path = cache_dir("calibration") / f"{plugin.name}-{family}-{digest}.json"
        self.count = count
        self._scores: dict[str, Score] = {}
        self._data = None
        if self.path.is_file():
            try:
                saved = json.loads(self.path.read_text())
                self._scores = {k: Score(**v) for k, v in saved["scores"].items()}
            except (ValueError, KeyError, TypeError):
                self._scores = {}  # a damaged cache file is measured again

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
        tmp = self.path.with_name(self.path.name + f".{id(self)}.tmp")
        scores = {k: vars(v) for k, v in self._scores.items()}
        tmp.write_text(json.dumps({"plugin": self.plugin.name, "scores": scores}, indent=1))
        Path(tmp).replace(self.path)
