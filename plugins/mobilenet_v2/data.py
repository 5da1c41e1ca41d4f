"""The mobilenet_v2 photos: real, labelled ImageNet photos committed beside the plugin.

`imagenet/` holds 204 test photos as their evaluation views (224x224 PNG, lossless:
exactly what is scored) and 610 train photos with their short side at 256 (JPEG), made
by `python -m plugins.mobilenet_v2.imagenet` (split by class index: every fourth class
is a test class). Labels come from the wnid in each file name and `imagenet/classes.tsv`,
the classifier's output order. Decoding takes a second or two; it is kept per process.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from testbed.errors import PluginError
from testbed.models.image_folder import (
    eval_view,
    labelled_files,
    load_image_folder,
    read_classes,
    read_rgb,
)
from testbed.models.plugin_api import Dataset

__all__ = ["DATA_DIR", "SPLITS", "classes", "load_folder", "load_split", "train_images"]

DATA_DIR = Path(__file__).with_name("imagenet")
SPLITS = ("test", "train")


@lru_cache(maxsize=1)
def classes() -> dict[str, int]:
    """wnid -> the classifier's output index."""
    return read_classes(DATA_DIR / "classes.tsv")


def _folder(split: str) -> Path:
    if split not in SPLITS:
        raise PluginError(f"unknown mobilenet_v2 split {split!r}; one of {', '.join(SPLITS)}")
    folder = DATA_DIR / split
    if not folder.is_dir():
        raise PluginError(
            f"mobilenet_v2: {folder} missing; it is part of the repository (or make it with "
            "python -m plugins.mobilenet_v2.imagenet --source DIR)"
        )
    return folder


@lru_cache(maxsize=2)
def load_split(split: str) -> Dataset:
    """uint8 (N, 3, 224, 224) evaluation views and int64 labels, in file-name order;
    for "train" the views of the train photos (calibration scores on them)."""
    return load_image_folder(_folder(split), classes(), view=split == "train")


def load_folder(folder: Path) -> Dataset:
    """A user's folder of photos (`test_data:`), as evaluation views."""
    return load_image_folder(Path(folder), classes(), view=True)


@lru_cache(maxsize=1)
def train_images() -> tuple[list[np.ndarray], np.ndarray]:
    """The train photos whole, (3, H, W) uint8 each with the short side 256, for random
    resized crops, and their labels."""
    files = labelled_files(_folder("train"), classes())
    images = [np.asarray(read_rgb(p), dtype=np.uint8).transpose(2, 0, 1) for p, _ in files]
    return images, np.array([label for _, label in files], dtype=np.int64)


def view_of(path: Path) -> np.ndarray:
    """One photo's evaluation view (for tests and tools)."""
    return eval_view(read_rgb(path))
