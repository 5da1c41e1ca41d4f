"""The smartwatch IMU data set that PyPI `seglearn` ships, cut into labelled windows.

Source: `seglearn/data/watch_dataset.npy` inside the `seglearn==1.2.5` wheel (what
`seglearn.datasets.load_watch()` returns; Burns et al., arXiv:1802.01489). It holds 140
recordings: 10 subjects x 7 shoulder exercises x 2 arms, each a (n, 6) float64 series of
accelerometer (ax, ay, az, in g) and gyroscope (wx, wy, wz, in rad/s) sampled at 50 Hz,
with one exercise label per recording.

The file is read directly, without importing `seglearn`: its package imports scikit-learn
and scipy, which the testbed does not need, so it is installed with `--no-deps`. The file
is a numpy object array (a pickled dict); it is unpickled by a restricted unpickler that
accepts only the four numpy/codec globals such a file needs, so a foreign file cannot run
code.

Windows: 100 samples (2 s at 50 Hz) every 50 samples (50 % overlap), within a recording,
never across two. Each window is labelled with its recording's exercise. The split is by
subject: `TEST_SUBJECTS` (3 of the 10, drawn by `numpy.random.default_rng(SPLIT_SEED)`)
are held out for testing, the other 7 train.

Raw inputs are int16, (6, 100) per window, channels ax ay az wx wy wz: each value is the
float value divided by `LSB` = 1e-3 (1 mg, 1 mrad/s per count, about what a real 16-bit
IMU at +-16 g / +-2000 deg/s reports), rounded and clipped to the int16 range. That covers
+-32.7 g and +-32.7 rad/s; the data set's extremes are 5.8 g and 29.0 rad/s, so nothing
clips. A window is 1,200 bytes on the wire.

Prepared windows are cached in `cache_dir("imu_har")` as one .npz whose name carries the
source file's sha256 prefix and the window parameters, so a changed source or setting
prepares afresh.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import pickle
from pathlib import Path

import numpy as np

from testbed.errors import PluginError
from testbed.models.cache import cache_dir
from testbed.models.plugin_api import Dataset

SEGLEARN_PIN = "seglearn==1.2.5"
ENV_VAR = "IMU_HAR_WATCH_FILE"
INSTALL_HINT = (
    f"install it with: pip install --no-deps {SEGLEARN_PIN} "
    f"(or point {ENV_VAR} at a copy of seglearn's data/watch_dataset.npy)"
)

SAMPLE_RATE_HZ = 50
WINDOW = 100  # samples: 2 s
STEP = 50  # samples: 50 % overlap
CHANNELS = ("ax", "ay", "az", "wx", "wy", "wz")
CLASS_NAMES = ("PEN", "ABD", "FEL", "IR", "ER", "TRAP", "ROW")
NUM_CLASSES = len(CLASS_NAMES)
LSB = 1e-3  # physical units (g or rad/s) per int16 count
SPLIT_SEED = 0
NUM_TEST_SUBJECTS = 3
SUBJECTS = tuple(range(1, 11))
TEST_SUBJECTS = tuple(
    sorted(
        int(s) for s in np.random.default_rng(SPLIT_SEED).permutation(SUBJECTS)[:NUM_TEST_SUBJECTS]
    )
)
SPLITS = ("train", "test")
_FORMAT_VERSION = 1  # bump when the preparation below changes

# The only globals a numpy object array of a dict of arrays, lists and strings needs.
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
    ("_codecs", "encode"): __import__("_codecs").encode,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed") from None


def source_file() -> Path:
    """The data file: $IMU_HAR_WATCH_FILE, else the one inside the installed seglearn.

    Found without importing seglearn (its __init__ needs scikit-learn)."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    spec = importlib.util.find_spec("seglearn")
    if spec is None or not spec.submodule_search_locations:
        raise PluginError(f"imu_har: package seglearn is not installed; {INSTALL_HINT}")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "watch_dataset.npy"


def read_watch(path: Path) -> dict:
    """Decode and check the watch data set: {'X': [(n, 6) float], 'y', 'subject', ...}."""
    path = Path(path)
    if not path.is_file():
        raise PluginError(f"imu_har: data file missing: {path}; {INSTALL_HINT}")
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            if shape != () or dtype != np.dtype(object):
                raise ValueError(f"holds a {dtype} array of shape {shape}, not a pickled dict")
            data = _RestrictedUnpickler(io.BytesIO(f.read())).load().item()
        xs, y, subject = data["X"], np.asarray(data["y"]), np.asarray(data["subject"])
        if not (len(xs) == len(y) == len(subject)) or len(xs) == 0:
            raise ValueError(f"{len(xs)} series but {len(y)} labels and {len(subject)} subjects")
        xs = [np.asarray(x, dtype=np.float64) for x in xs]
        if any(x.ndim != 2 or x.shape[1] != len(CHANNELS) for x in xs):
            raise ValueError(f"series are not (n, {len(CHANNELS)}) arrays")
        if y.min() < 0 or y.max() >= NUM_CLASSES:
            raise ValueError(f"labels outside 0..{NUM_CLASSES - 1}")
        if any(not np.isfinite(x).all() for x in xs):
            raise ValueError("series hold NaN or infinite values")
    except PluginError:
        raise
    except Exception as exc:  # malformed npy header, pickle, keys, shapes
        raise PluginError(
            f"imu_har: data file malformed: {path} ({type(exc).__name__}: {exc}); {INSTALL_HINT}"
        ) from exc
    return {"X": xs, "y": y.astype(np.int64), "subject": subject.astype(np.int64)}


def quantize(x: np.ndarray) -> np.ndarray:
    """Float IMU values (g, rad/s) -> int16 counts of LSB."""
    return np.clip(np.rint(x / LSB), -32768, 32767).astype(np.int16)


def make_windows(data: dict) -> dict[str, np.ndarray]:
    """All windows of all recordings, in recording order: inputs (N, 6, WINDOW) int16."""
    inputs, labels, subjects, recordings = [], [], [], []
    for i, (x, y, s) in enumerate(zip(data["X"], data["y"], data["subject"], strict=True)):
        starts = range(0, len(x) - WINDOW + 1, STEP)
        for start in starts:
            inputs.append(quantize(x[start : start + WINDOW].T))
        labels += [y] * len(starts)
        subjects += [s] * len(starts)
        recordings += [i] * len(starts)
    return {
        "inputs": np.stack(inputs),
        "labels": np.asarray(labels, dtype=np.int64),
        "subjects": np.asarray(subjects, dtype=np.int64),
        "recordings": np.asarray(recordings, dtype=np.int64),
    }


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def prepared(path: Path | None = None) -> dict[str, np.ndarray]:
    """Windows of every recording, from the cache when it holds them for this source."""
    path = source_file() if path is None else Path(path)
    if not path.is_file():
        raise PluginError(f"imu_har: data file missing: {path}; {INSTALL_HINT}")
    name = f"windows-v{_FORMAT_VERSION}-w{WINDOW}-s{STEP}-{_sha256(path)[:16]}.npz"
    cached = cache_dir("imu_har") / name
    if cached.is_file():
        try:
            with np.load(cached, allow_pickle=False) as z:
                windows = {k: z[k] for k in ("inputs", "labels", "subjects", "recordings")}
            if windows["inputs"].shape[1:] == (len(CHANNELS), WINDOW):
                return windows
        except Exception:  # a damaged cache file is prepared afresh
            pass
    windows = make_windows(read_watch(path))
    tmp = cached.with_name(f"{cached.name}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **windows)
    os.replace(tmp, cached)
    return windows


def load_split(split: str, path: Path | None = None) -> Dataset:
    """Windows of the split's subjects: int16 (N, 6, 100) inputs, int64 (N,) labels."""
    if split not in SPLITS:
        raise PluginError(f"unknown imu_har split {split!r}; one of {', '.join(SPLITS)}")
    windows = prepared(path)
    held_out = np.isin(windows["subjects"], TEST_SUBJECTS)
    keep = held_out if split == "test" else ~held_out
    return Dataset(inputs=windows["inputs"][keep], labels=windows["labels"][keep])


def split_subjects(split: str, path: Path | None = None) -> np.ndarray:
    """Subject id of each window of the split, in the order of load_split's windows."""
    windows = prepared(path)
    held_out = np.isin(windows["subjects"], TEST_SUBJECTS)
    return windows["subjects"][held_out if split == "test" else ~held_out]
