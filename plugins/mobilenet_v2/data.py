"""The mobilenet_v2 test and train crops, read from the testbed cache.

prepare.py builds them (a few seconds); `load_split` runs it the first time, or when
the cache is incomplete or from an older version of the crops, and says so in one line.
Labels are all -1: the photos have no ImageNet labels, and the plugin's metric is
agreement with the unsplit model.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from testbed.cache import cache_dir
from testbed.errors import PluginError
from testbed.plugin_api import Dataset

SPLITS = ("test", "train")


def _manifest(directory: Path) -> dict | None:
    from plugins.mobilenet_v2.prepare import FILES, VERSION

    if not all((directory / name).is_file() for name in FILES):
        return None
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return manifest if manifest.get("version") == VERSION else None


def ensure_prepared(directory: Path | None = None) -> tuple[Path, dict]:
    from plugins.mobilenet_v2.prepare import prepare

    directory = cache_dir("mobilenet_v2") if directory is None else Path(directory)
    manifest = _manifest(directory)
    if manifest is None:
        print(
            f"mobilenet_v2: preparing the photo crops in {directory} (once; "
            f"python -m plugins.mobilenet_v2.prepare)",
            file=sys.stderr,
        )
        prepare(directory, progress=False)
        manifest = _manifest(directory)
        if manifest is None:
            raise PluginError(f"mobilenet_v2: preparation left no usable cache in {directory}")
    return directory, manifest


def load_split(split: str, directory: Path | None = None) -> Dataset:
    """Crops as uint8 (N, 3, 224, 224), labels int64 (N,) all -1."""
    if split not in SPLITS:
        raise PluginError(f"unknown mobilenet_v2 split {split!r}; one of {', '.join(SPLITS)}")
    directory, manifest = ensure_prepared(directory)
    path = directory / f"{split}_inputs.npy"
    try:
        inputs = np.load(path)
    except (OSError, ValueError) as exc:
        raise PluginError(
            f"mobilenet_v2: cached crops unreadable: {path} ({exc}); delete {directory} "
            f"or run: python -m plugins.mobilenet_v2.prepare"
        ) from exc
    expected = (len(manifest[split]), 3, manifest["size"], manifest["size"])
    if inputs.shape != expected or inputs.dtype != np.uint8:
        raise PluginError(
            f"mobilenet_v2: cached crops {path} are {inputs.dtype} {inputs.shape}, expected "
            f"uint8 {expected}; run: python -m plugins.mobilenet_v2.prepare"
        )
    return Dataset(inputs=inputs, labels=np.full(len(inputs), -1, dtype=np.int64))


def crop_sources(split: str, directory: Path | None = None) -> list[dict]:
    """Per crop: {"source": "package:file", "box": [x0, y0, x1, y1]} in source pixels."""
    _, manifest = ensure_prepared(directory)
    return manifest[split]
