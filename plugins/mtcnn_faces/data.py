"""The mtcnn_faces test images: 640x480 RGB frames built from photos that install with the
testbed (nothing is downloaded); `python -m plugins.mtcnn_faces.data [--out DIR]` builds
them into the testbed cache, and `load_test` does so the first time, with a one-line note.

Sources (all already pinned in requirements.lock or scripts/setup.sh):
- PyPI `scikit-image` (installed with --no-deps; only its data folder is read):
  `astronaut.png` and `camera.png` (one face each), `lfw_subset.npy` (100 face and 100
  non-face 25x25 grey patches from Labeled Faces in the Wild), and five photos without
  faces: chelsea, coffee, rocket, motorcycle_left, hubble_deep_field;
- PyPI `matplotlib`: `mpl-data/sample_data/grace_hopper.jpg` (one face; the package is
  not imported, only the file is read);
- Debian `mate-backgrounds`: the 12 `nature/*.jpg` photos (no faces).

Every frame is 480x640 (H x W) uint8 RGB, decoded and resized with Pillow (bicubic).
A photo is letterboxed: scaled to fit and centred on black. The set (deterministic, seed 0):
- portraits (3 photos x 3 views): the whole photo; its top 60% (a larger face); the photo
  scaled to 200 px high and pasted at a seeded place on a background (a smaller face);
- group: the three portraits side by side (faces 23-90 px);
- crowds: the 100 LFW faces, 11-12 per frame in 9 frames, each scaled to a seeded side
  of 24-120 px (log-uniform) in its own cell of a 4x3 grid on a background;
- no faces: the 12 mate photos, the 5 scikit-image photos, 2 frames of 12 LFW non-face
  patches placed like the crowds.
Backgrounds are the central 960x720 of a mate photo scaled to 640x480. The manifest records
per frame its kind, sources and the number of faces placed (and, for the crowds, the box of
every pasted face patch).

The train split (`load_train`, for learned codecs such as DeepCOD) shares no photo with the
test frames: the other photos of the same installed packages (`TRAIN_PHOTOS`: 7 mate
`abstract`, 6 mate `desktop` and 13 scikit-image photos; none shows a face, none is
installed beside those with faces), each as 3 frames: letterboxed whole, and two seeded
crops (a quarter to three quarters of its shorter side, aspect 3:4 to 16:9) scaled
to 640x480, one of them mirrored. Cached beside the test frames (`train_inputs.npy`,
`train_manifest.json`), deterministic (seed `TRAIN_SEED`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from testbed.errors import PluginError
from testbed.models.cache import cache_dir
from testbed.models.plugin_api import Dataset

HEIGHT, WIDTH = 480, 640
# Bump when the frames change, so that old caches are rebuilt rather than reused.
VERSION = 2
SEED = 0
FILES = ("test_inputs.npy", "manifest.json")
TRAIN_VERSION = 1
TRAIN_SEED = 1
TRAIN_FILES = ("train_inputs.npy", "train_manifest.json")

SKIMAGE_HINT = "install it with: pip install --no-deps scikit-image==0.26.0"
MATPLOTLIB_HINT = "install it with: pip install matplotlib==3.11.2"
MATE_ENV = "MATE_BACKGROUNDS_DIR"
MATE_DEFAULT = Path("/usr/share/backgrounds/mate")
MATE_HINT = f"install it with: apt-get install mate-backgrounds (or point {MATE_ENV} at a copy)"

PORTRAITS = ("scikit-image:astronaut.png", "scikit-image:camera.png", "matplotlib:grace_hopper.jpg")
NO_FACE_PHOTOS = tuple(
    f"scikit-image:{name}"
    for name in (
        "chelsea.png",
        "coffee.png",
        "rocket.jpg",
        "motorcycle_left.png",
        "hubble_deep_field.jpg",
    )
)
MATE_PHOTOS = tuple(
    f"mate-backgrounds:nature/{name}.jpg"
    for name in (
        "Aqua",
        "Blinds",
        "Dune",
        "FreshFlower",
        "Garden",
        "GreenMeadow",
        "LadyBird",
        "RainDrops",
        "Storm",
        "TwoWings",
        "Wood",
        "YellowFlower",
    )
)
# the train split's photos: none of them is in a test frame (motorcycle_right is left out:
# it is the stereo twin of the test frames' motorcycle_left)
TRAIN_PHOTOS = (
    *(
        f"mate-backgrounds:abstract/{name}"
        for name in (
            "Arc-Colors-Transparent-Wallpaper.png",
            "Elephants.jpg",
            "Flow.png",
            "Gulp.png",
            "Silk.png",
            "Spring.png",
            "Waves.png",
        )
    ),
    *(
        f"mate-backgrounds:desktop/{name}"
        for name in (
            "Float-into-MATE.png",
            "GreenTraditional.jpg",
            "Ubuntu-Mate-Cold-no-logo.png",
            "Ubuntu-Mate-Dark-no-logo.png",
            "Ubuntu-Mate-Radioactive-no-logo.png",
            "Ubuntu-Mate-Warm-no-logo.png",
        )
    ),
    *(
        f"scikit-image:{name}"
        for name in (
            "brick.png",
            "cell.png",
            "clock_motion.png",
            "coins.png",
            "color.png",
            "grass.png",
            "gravel.png",
            "horse.png",
            "ihc.png",
            "moon.png",
            "page.png",
            "retina.jpg",
            "text.png",
        )
    ),
)
TRAIN_CROPS = 2  # seeded crops per train photo, besides the whole photo
LFW = "scikit-image:lfw_subset.npy"
LFW_FACES = 100  # the file holds 100 faces, then 100 non-face patches
CROWD_FRAMES = 9  # 11-12 faces each: at most one per cell
NON_FACE_FRAMES = 2
CELL = 160  # crowds: a 4x3 grid of 160x160 cells, one patch per cell
CELLS = (WIDTH // CELL) * (HEIGHT // CELL)
PATCH_SIDES = (24, 120)
PIP_HEIGHT = 200  # portraits pasted on a background: their height in the frame


def mate_dir() -> Path:
    return Path(os.environ.get(MATE_ENV) or MATE_DEFAULT)


def _distribution_file(dist: str, relative: str, hint: str) -> Path:
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        return Path(distribution(dist).locate_file(relative))
    except PackageNotFoundError:
        raise PluginError(f"mtcnn_faces photos: {dist} missing; {hint}") from None


def source_path(name: str) -> Path:
    """`package:file` -> the installed file; PluginError with the install command if absent."""
    package, _, file = name.partition(":")
    if package == "scikit-image":
        path, hint = _distribution_file(package, f"skimage/data/{file}", SKIMAGE_HINT), SKIMAGE_HINT
    elif package == "matplotlib":
        path = _distribution_file(
            package, f"matplotlib/mpl-data/sample_data/{file}", MATPLOTLIB_HINT
        )
        hint = MATPLOTLIB_HINT
    elif package == "mate-backgrounds":
        path, hint = mate_dir() / file, MATE_HINT
    else:
        raise ValueError(f"unknown source package {package!r}")
    if not path.is_file():
        raise PluginError(f"mtcnn_faces photo missing: {path} ({name}); {hint}")
    return path


def _open_rgb(name: str):
    from PIL import Image

    with Image.open(source_path(name)) as opened:
        return opened.convert("RGB")


def letterbox(image, width: int = WIDTH, height: int = HEIGHT, box=None):
    """A PIL image (or its `box`) scaled to fit width x height, centred on black."""
    from PIL import Image

    left, top, right, bottom = box or (0, 0, *image.size)
    scale = min(width / (right - left), height / (bottom - top))
    size = (max(1, round((right - left) * scale)), max(1, round((bottom - top) * scale)))
    resized = image.resize(size, Image.Resampling.BICUBIC, box=(left, top, right, bottom))
    frame = Image.new("RGB", (width, height))
    frame.paste(resized, ((width - size[0]) // 2, (height - size[1]) // 2))
    return frame


def background(index: int):
    """The central 960x720 of the index-th mate photo, scaled to the frame size."""
    from PIL import Image

    image = _open_rgb(MATE_PHOTOS[index % len(MATE_PHOTOS)])
    w, h = image.size
    bw, bh = min(w, 960), min(h, 720)
    box = ((w - bw) // 2, (h - bh) // 2, (w + bw) // 2, (h + bh) // 2)
    return image.resize((WIDTH, HEIGHT), Image.Resampling.BICUBIC, box=box)


def _patch_frame(patches: np.ndarray, base, rng: np.random.Generator):
    """Paste grey patches (float [0, 1]) one per grid cell, seeded side and place."""
    from PIL import Image

    if len(patches) > CELLS:
        raise ValueError(f"{len(patches)} patches for {CELLS} cells: some would leave the frame")
    frame = base.copy()
    boxes = []
    for k, patch in enumerate(patches):
        row, col = divmod(k, WIDTH // CELL)
        low, high = PATCH_SIDES
        side = round(float(np.exp(rng.uniform(np.log(low), np.log(high)))))
        x = col * CELL + int(rng.integers(0, CELL - side + 1))
        y = row * CELL + int(rng.integers(0, CELL - side + 1))
        grey = Image.fromarray(np.round(patch * 255).astype(np.uint8))
        frame.paste(grey.resize((side, side), Image.Resampling.BICUBIC).convert("RGB"), (x, y))
        boxes.append([x, y, x + side, y + side])
    return frame, boxes


def build() -> tuple[np.ndarray, list[dict]]:
    """Every frame, (N, 3, 480, 640) uint8, and its manifest entry."""
    from PIL import Image, ImageOps

    rng = np.random.default_rng(SEED)
    frames, meta = [], []

    def add(frame, **info):
        frames.append(np.asarray(frame, dtype=np.uint8).transpose(2, 0, 1))
        meta.append(info)

    portraits = [_open_rgb(name) for name in PORTRAITS]
    for k, (name, photo) in enumerate(zip(PORTRAITS, portraits, strict=True)):
        w, h = photo.size
        add(letterbox(photo), kind="portrait", view="whole", sources=[name], faces=1)
        add(
            letterbox(photo, box=(0, 0, w, round(h * 0.6))),
            kind="portrait",
            view="top 60%",
            sources=[name],
            faces=1,
        )
        base = background(k)
        small = photo.resize((round(w * PIP_HEIGHT / h), PIP_HEIGHT), Image.Resampling.BICUBIC)
        x = int(rng.integers(0, WIDTH - small.width + 1))
        y = int(rng.integers(0, HEIGHT - small.height + 1))
        base.paste(small, (x, y))
        add(
            base,
            kind="portrait",
            view=f"{PIP_HEIGHT} px high on a background",
            sources=[name, MATE_PHOTOS[k]],
            faces=1,
        )

    group = Image.new("RGB", (WIDTH, HEIGHT))
    third = WIDTH // 3
    for k, photo in enumerate(portraits):
        tile = ImageOps.contain(photo, (third, HEIGHT), Image.Resampling.BICUBIC)
        group.paste(tile, (k * third + (third - tile.width) // 2, (HEIGHT - tile.height) // 2))
    add(group, kind="group", view="side by side", sources=list(PORTRAITS), faces=3)

    lfw = np.load(source_path(LFW))
    faces, non_faces = lfw[:LFW_FACES], lfw[LFW_FACES:]
    for k, chunk in enumerate(np.array_split(np.arange(LFW_FACES), CROWD_FRAMES)):
        bg = 3 + k  # backgrounds 0-2 carry the pasted portraits
        frame, boxes = _patch_frame(faces[chunk], background(bg), rng)
        add(
            frame,
            kind="crowd",
            view=f"LFW faces {chunk[0]}-{chunk[-1]}",
            sources=[LFW, MATE_PHOTOS[bg % len(MATE_PHOTOS)]],
            faces=len(chunk),
            face_boxes=boxes,
        )

    for name in (*MATE_PHOTOS, *NO_FACE_PHOTOS):
        add(letterbox(_open_rgb(name)), kind="no face", view="whole", sources=[name], faces=0)
    per_frame = CELLS
    for k in range(NON_FACE_FRAMES):
        bg = 3 + CROWD_FRAMES + k
        frame, _ = _patch_frame(non_faces[k * per_frame : (k + 1) * per_frame], background(bg), rng)
        add(
            frame,
            kind="no face",
            view=f"LFW non-face patches {k * per_frame}-{(k + 1) * per_frame - 1}",
            sources=[LFW, MATE_PHOTOS[bg % len(MATE_PHOTOS)]],
            faces=0,
        )
    return np.stack(frames), meta


def build_train() -> tuple[np.ndarray, list[dict]]:
    """The train frames, (N, 3, 480, 640) uint8, and their manifest entries."""
    from PIL import Image, ImageOps

    rng = np.random.default_rng(TRAIN_SEED)
    frames, meta = [], []
    for name in TRAIN_PHOTOS:
        photo = _open_rgb(name)
        frames.append(letterbox(photo))
        meta.append({"sources": [name], "view": "whole"})
        w, h = photo.size
        for k in range(TRAIN_CROPS):
            side = rng.uniform(0.25, 0.75) * min(w, h)
            aspect = rng.uniform(0.75, 16 / 9)  # width / height
            cw, ch = min(w, round(side * np.sqrt(aspect))), min(h, round(side / np.sqrt(aspect)))
            x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            crop = photo.resize(
                (WIDTH, HEIGHT), Image.Resampling.BICUBIC, box=(x, y, x + cw, y + ch)
            )
            if k % 2:
                crop = ImageOps.mirror(crop)
            frames.append(crop)
            meta.append(
                {
                    "sources": [name],
                    "view": f"crop {x},{y} {cw}x{ch}" + (" mirrored" if k % 2 else ""),
                }
            )
    return np.stack([np.asarray(f, dtype=np.uint8).transpose(2, 0, 1) for f in frames]), meta


def _save_npy(array: np.ndarray, path: Path) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def prepare(directory: Path | None = None) -> Path:
    """Write the frames and manifest into the cache (the manifest, written last, marks
    a complete preparation). Returns the directory."""
    directory = cache_dir("mtcnn_faces") if directory is None else Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    inputs, meta = build()
    _save_npy(inputs, directory / "test_inputs.npy")
    manifest = {"version": VERSION, "seed": SEED, "height": HEIGHT, "width": WIDTH, "test": meta}
    tmp = directory / f"manifest.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(manifest))
    os.replace(tmp, directory / "manifest.json")
    return directory


def _manifest(directory: Path) -> dict | None:
    if not all((directory / name).is_file() for name in FILES):
        return None
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return manifest if manifest.get("version") == VERSION else None


def ensure_prepared(directory: Path | None = None) -> tuple[Path, dict]:
    directory = cache_dir("mtcnn_faces") if directory is None else Path(directory)
    manifest = _manifest(directory)
    if manifest is None:
        print(
            f"mtcnn_faces: preparing the test frames in {directory} (once; "
            f"python -m plugins.mtcnn_faces.data)",
            file=sys.stderr,
        )
        prepare(directory)
        manifest = _manifest(directory)
        if manifest is None:
            raise PluginError(f"mtcnn_faces: preparation left no usable cache in {directory}")
    return directory, manifest


def load_test(directory: Path | None = None) -> Dataset:
    """Frames as uint8 (N, 3, 480, 640), labels int64 (N,) all -1 (the metric compares
    with the unmodified detector's output, not with labels)."""
    directory, manifest = ensure_prepared(directory)
    path = directory / "test_inputs.npy"
    try:
        inputs = np.load(path)
    except (OSError, ValueError) as exc:
        raise PluginError(
            f"mtcnn_faces: cached frames unreadable: {path} ({exc}); delete {directory} "
            f"or run: python -m plugins.mtcnn_faces.data"
        ) from exc
    expected = (len(manifest["test"]), 3, HEIGHT, WIDTH)
    if inputs.shape != expected or inputs.dtype != np.uint8:
        raise PluginError(
            f"mtcnn_faces: cached frames {path} are {inputs.dtype} {inputs.shape}, expected "
            f"uint8 {expected}; run: python -m plugins.mtcnn_faces.data"
        )
    return Dataset(inputs=inputs, labels=np.full(len(inputs), -1, dtype=np.int64))


def prepare_train(directory: Path | None = None) -> Path:
    """Write the train frames and their manifest (last) into the cache."""
    directory = cache_dir("mtcnn_faces") if directory is None else Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    inputs, meta = build_train()
    _save_npy(inputs, directory / "train_inputs.npy")
    manifest = {"version": TRAIN_VERSION, "seed": TRAIN_SEED, "train": meta}
    tmp = directory / f"train_manifest.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(manifest))
    os.replace(tmp, directory / "train_manifest.json")
    return directory


def load_train(directory: Path | None = None) -> Dataset:
    """The train frames (built into the cache the first time, in seconds), labels all -1."""
    directory = cache_dir("mtcnn_faces") if directory is None else Path(directory)
    manifest = None
    if all((directory / name).is_file() for name in TRAIN_FILES):
        try:
            manifest = json.loads((directory / "train_manifest.json").read_text())
        except (OSError, ValueError):
            manifest = None
    if manifest is None or manifest.get("version") != TRAIN_VERSION:
        print(f"mtcnn_faces: preparing the train frames in {directory} (once)", file=sys.stderr)
        prepare_train(directory)
        manifest = json.loads((directory / "train_manifest.json").read_text())
    path = directory / "train_inputs.npy"
    try:
        inputs = np.load(path)
    except (OSError, ValueError) as exc:
        raise PluginError(f"mtcnn_faces: cached train frames unreadable: {path} ({exc})") from exc
    if inputs.shape != (len(manifest["train"]), 3, HEIGHT, WIDTH) or inputs.dtype != np.uint8:
        raise PluginError(f"mtcnn_faces: cached train frames {path} are {inputs.shape}; delete it")
    return Dataset(inputs=inputs, labels=np.full(len(inputs), -1, dtype=np.int64))


def train_info(directory: Path | None = None) -> list[dict]:
    """Per train frame: its source photo and view."""
    directory = cache_dir("mtcnn_faces") if directory is None else Path(directory)
    load_train(directory)
    return json.loads((directory / "train_manifest.json").read_text())["train"]


def frame_info(directory: Path | None = None) -> list[dict]:
    """Per test frame: kind, view, sources, faces placed (and crowds' face_boxes)."""
    return ensure_prepared(directory)[1]["test"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m plugins.mtcnn_faces.data", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", type=Path, default=None, help="default: the testbed cache")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        directory = prepare(args.out)
    except PluginError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    meta = json.loads((directory / "manifest.json").read_text())["test"]
    with_faces = sum(1 for m in meta if m["faces"])
    print(
        f"{len(meta)} frames ({with_faces} with faces, {len(meta) - with_faces} without) in "
        f"{directory} after {time.monotonic() - started:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
