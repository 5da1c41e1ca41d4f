"""Build the mobilenet_v2 photo crops: `python -m plugins.mobilenet_v2.prepare [--out DIR]`.

Sources (all installed from package registries, nothing downloaded here):
- 14 large photos of Debian's `mate-backgrounds` (1280-2560 px wide);
- 14 small images shipped inside the PyPI wheel `scikit-image` (installed with
  `--no-deps`; only its data files are read, skimage itself is never imported).

Every crop is 224x224 RGB uint8, decoded and resized with Pillow (bicubic, which
antialiases when shrinking). Grey images are repeated into three channels.

Test set, deterministic:
- each small image: the ImageNet evaluation view (resize the short side to 256, keep
  the central 224x224), 1 crop;
- each large photo: one half of it (left or right, alternating along the list) is its
  test half; crops are the central square of that half, then the square cut into 2x2
  and into 3x3 tiles: 1 + 4 + 9 = 14 crops.
Train set (for encoders trained later): 64 random square crops per large photo, each
inside the other half (side 25-100% of the half's short side, seeded), so that no
train pixel comes from a test region. The box of every crop, in the source's pixels,
is recorded in manifest.json, and the tests check that test and train boxes never meet.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from testbed.cache import cache_dir
from testbed.errors import PluginError

SIZE = 224
# Bump when the crops change, so that old caches are rebuilt rather than reused.
VERSION = 1
SEED = 0
TRAIN_PER_PHOTO = 64

MATE_ENV = "MATE_BACKGROUNDS_DIR"
MATE_DEFAULT = Path("/usr/share/backgrounds/mate")
MATE_HINT = f"install it with: apt-get install mate-backgrounds (or point {MATE_ENV} at a copy)"
MATE_PHOTOS = (
    "nature/Aqua.jpg", "nature/Blinds.jpg", "nature/Dune.jpg", "nature/FreshFlower.jpg",
    "nature/Garden.jpg", "nature/GreenMeadow.jpg", "nature/LadyBird.jpg",
    "nature/RainDrops.jpg", "nature/Storm.jpg", "nature/TwoWings.jpg", "nature/Wood.jpg",
    "nature/YellowFlower.jpg", "abstract/Elephants.jpg", "desktop/GreenTraditional.jpg",
)  # fmt: skip

SKIMAGE_DIST = "scikit-image"
SKIMAGE_HINT = "install it with: pip install --no-deps scikit-image==0.26.0"
SKIMAGE_IMAGES = (
    "astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
    "camera.png", "coins.png", "moon.png", "brick.png", "grass.png", "gravel.png",
    "hubble_deep_field.jpg", "retina.jpg", "ihc.png",
)  # fmt: skip

FILES = ("test_inputs.npy", "train_inputs.npy", "manifest.json")


def mate_dir() -> Path:
    return Path(os.environ.get(MATE_ENV) or MATE_DEFAULT)


def skimage_data_dir() -> Path:
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        return Path(distribution(SKIMAGE_DIST).locate_file("skimage/data"))
    except PackageNotFoundError:
        raise PluginError(f"mobilenet_v2 photos: {SKIMAGE_DIST} missing; {SKIMAGE_HINT}") from None


def sources() -> list[tuple[str, Path, str]]:
    """(name, path, kind) of every source image, kind "small" or "large"; missing files
    fail here, before any work, with the install command."""
    found = []
    for name in SKIMAGE_IMAGES:
        found.append((f"scikit-image:{name}", skimage_data_dir() / name, "small", SKIMAGE_HINT))
    for name in MATE_PHOTOS:
        found.append((f"mate-backgrounds:{name}", mate_dir() / name, "large", MATE_HINT))
    for name, path, _, hint in found:
        if not path.is_file():
            raise PluginError(f"mobilenet_v2 photo missing: {path} ({name}); {hint}")
    return [(name, path, kind) for name, path, kind, _ in found]


def _crop(image, box: tuple[int, int, int, int]) -> np.ndarray:
    """The box of a PIL RGB image resized to SIZE x SIZE, as uint8 (3, SIZE, SIZE)."""
    from PIL import Image

    resized = image.resize((SIZE, SIZE), Image.Resampling.BICUBIC, box=box)
    return np.asarray(resized, dtype=np.uint8).transpose(2, 0, 1)


def _square(x0: int, y0: int, w: int, h: int, side: int) -> tuple[int, int, int, int]:
    """The square of `side` centred in the rectangle (x0, y0, w, h)."""
    left, top = x0 + (w - side) // 2, y0 + (h - side) // 2
    return (left, top, left + side, top + side)


def small_boxes(w: int, h: int) -> list[tuple[int, int, int, int]]:
    """ImageNet evaluation view: short side to 256, central 224 (i.e. 87.5% of it)."""
    return [_square(0, 0, w, h, round(min(w, h) * SIZE / 256))]


def halves(index: int, w: int, h: int) -> tuple[tuple[int, int, int, int], ...]:
    """(test half, train half) as (x0, y0, w, h): left/right alternating with the index."""
    half = w // 2
    left, right = (0, 0, half, h), (half, 0, w - half, h)
    return (left, right) if index % 2 == 0 else (right, left)


def large_test_boxes(half: tuple[int, int, int, int]) -> list[tuple[int, int, int, int]]:
    x0, y0, w, h = half
    side = min(w, h)
    left, top, _, _ = _square(x0, y0, w, h, side)
    boxes = [(left, top, left + side, top + side)]
    for grid in (2, 3):
        step = side // grid
        for row in range(grid):
            for col in range(grid):
                x, y = left + col * step, top + row * step
                boxes.append((x, y, x + step, y + step))
    return boxes


def large_train_boxes(half, count: int, rng: np.random.Generator):
    x0, y0, w, h = half
    short = min(w, h)
    boxes = []
    for _ in range(count):
        side = int(rng.integers(short // 4, short + 1))
        x = x0 + int(rng.integers(0, w - side + 1))
        y = y0 + int(rng.integers(0, h - side + 1))
        boxes.append((x, y, x + side, y + side))
    return boxes


def build(train_per_photo: int = TRAIN_PER_PHOTO, progress: bool = True) -> dict:
    """Decode every source and cut its crops: {"test": (inputs, meta), "train": ...}."""
    from PIL import Image
    from tqdm import tqdm

    rng = np.random.default_rng(SEED)
    out = {"test": ([], []), "train": ([], [])}
    large_index = 0
    for name, path, kind in tqdm(sources(), desc="mobilenet_v2 crops", unit="photo",
                                 disable=not progress):  # fmt: skip
        with Image.open(path) as opened:
            image = opened.convert("RGB")
        w, h = image.size
        plan = {"test": small_boxes(w, h), "train": []}
        if kind == "large":
            test_half, train_half = halves(large_index, w, h)
            plan = {
                "test": large_test_boxes(test_half),
                "train": large_train_boxes(train_half, train_per_photo, rng),
            }
            large_index += 1
        for split, boxes in plan.items():
            for box in boxes:
                out[split][0].append(_crop(image, box))
                out[split][1].append({"source": name, "box": list(box)})
    empty = np.zeros((0, 3, SIZE, SIZE), dtype=np.uint8)
    return {
        split: (np.stack(crops) if crops else empty, meta) for split, (crops, meta) in out.items()
    }


def _save_npy(array: np.ndarray, path: Path) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def prepare(directory: Path | None = None, progress: bool = True) -> Path:
    """Write the crops into the cache (atomically: the manifest, written last, marks a
    complete preparation). Returns the directory."""
    directory = cache_dir("mobilenet_v2") if directory is None else Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    built = build(progress=progress)
    for split, (inputs, _) in built.items():
        _save_npy(inputs, directory / f"{split}_inputs.npy")
    manifest = {
        "version": VERSION,
        "size": SIZE,
        "seed": SEED,
        **{split: meta for split, (_, meta) in built.items()},
    }
    tmp = directory / f"manifest.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(manifest))
    os.replace(tmp, directory / "manifest.json")
    return directory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m plugins.mobilenet_v2.prepare", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", type=Path, default=None, help="default: the testbed cache")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        directory = prepare(args.out)
    except PluginError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    manifest = json.loads((directory / "manifest.json").read_text())
    print(
        f"{len(manifest['test'])} test and {len(manifest['train'])} train crops in "
        f"{directory} after {time.monotonic() - started:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
