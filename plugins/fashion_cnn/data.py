"""Fashion-MNIST from Debian's `dataset-fashion-mnist`, read with numpy alone.

The idx files are read strictly (magic number, dimensions, payload size, label range), so
that a truncated or foreign file fails here with the file's name and the fix, rather than
as a shape error deep inside an offloader.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from testbed.errors import PluginError
from testbed.models.plugin_api import Dataset

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
ENV_VAR = "FASHION_MNIST_DIR"
INSTALL_HINT = (
    f"install it with: apt-get install dataset-fashion-mnist "
    f"(or point {ENV_VAR} at a directory holding the four idx .gz files)"
)

IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10
SPLITS = {
    # split -> (images file, labels file, number of samples)
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60_000),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10_000),
}
_UBYTE = 0x08  # idx type code for unsigned bytes, the only one Fashion-MNIST uses


def data_dir() -> Path:
    """Read at call time, so that tests and users can redirect it without re-importing."""
    return Path(os.environ.get(ENV_VAR) or DEFAULT_DIR)


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Decode one idx file (gzip-compressed if its name ends in .gz) of unsigned bytes."""
    path = Path(path)
    if not path.is_file():
        raise PluginError(f"Fashion-MNIST file missing: {path}; {INSTALL_HINT}")
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise PluginError(f"Fashion-MNIST file unreadable: {path} ({exc}); {INSTALL_HINT}") from exc

    header = 4 + 4 * ndim
    if len(raw) < header:
        raise PluginError(
            f"Fashion-MNIST file malformed: {path} is {len(raw)} bytes, shorter than its "
            f"{header}-byte idx header; {INSTALL_HINT}"
        )
    zero, type_code, got_ndim = raw[0] << 8 | raw[1], raw[2], raw[3]
    if zero != 0 or type_code != _UBYTE or got_ndim != ndim:
        raise PluginError(
            f"Fashion-MNIST file malformed: {path} has magic number 0x{raw[:4].hex()}, "
            f"expected 0x{_UBYTE << 8 | ndim:08x} (unsigned bytes, {ndim} dimensions); "
            f"{INSTALL_HINT}"
        )
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        raise PluginError(
            f"Fashion-MNIST file malformed: {path} is {len(raw)} bytes (decompressed), but its "
            f"header declares dimensions {dims}, i.e. {expected} bytes; {INSTALL_HINT}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def load_split(split: str, directory: Path | None = None) -> Dataset:
    """Images as uint8 (N, 1, 28, 28), labels as int64 (N,), checked against each other."""
    if split not in SPLITS:
        raise PluginError(f"unknown Fashion-MNIST split {split!r}; one of {', '.join(SPLITS)}")
    directory = data_dir() if directory is None else Path(directory)
    if not directory.is_dir():
        raise PluginError(f"Fashion-MNIST directory missing: {directory}; {INSTALL_HINT}")
    images_name, labels_name, count = SPLITS[split]
    images = read_idx(directory / images_name, ndim=3)
    labels = read_idx(directory / labels_name, ndim=1)

    if images.shape != (count, *IMAGE_SHAPE):
        raise PluginError(
            f"Fashion-MNIST file malformed: {directory / images_name} holds images of shape "
            f"{images.shape}, expected {(count, *IMAGE_SHAPE)}; {INSTALL_HINT}"
        )
    if labels.shape != (count,):
        raise PluginError(
            f"Fashion-MNIST file malformed: {directory / labels_name} holds {labels.shape[0]} "
            f"labels, expected {count}; {INSTALL_HINT}"
        )
    if labels.max() >= NUM_CLASSES:
        raise PluginError(
            f"Fashion-MNIST file malformed: {directory / labels_name} holds label "
            f"{int(labels.max())}, expected 0..{NUM_CLASSES - 1}; {INSTALL_HINT}"
        )
    # Copies: np.frombuffer views are read-only, and torch.from_numpy warns on those.
    return Dataset(
        inputs=images.reshape(count, 1, *IMAGE_SHAPE).copy(), labels=labels.astype(np.int64)
    )
