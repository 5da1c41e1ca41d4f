"""Folders of labelled ImageNet-style photos, read as a plugin's test set.

A folder holds `<wnid>_<anything>.<ext>` files (as `imagenet-samples` does) or ImageNet's
own layout, a `<wnid>/` sub-folder per class; the label is the wnid's index in the class
list (`classes.tsv`: index, wnid, name). Each photo becomes the ImageNet evaluation view
(`eval_view`: short side resized to 256, the central 224x224, as torchvision's
`Resize(256)` + `CenterCrop(224)` with Pillow's antialiased bilinear filter), so that a
folder of original photos scores as the classifiers were evaluated.

Bad folders are a user's mistake, not a crash: no usable image, an unknown wnid, a file
Pillow cannot read, each ends in one `DataError` line (exit 2) that names the file.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np

from testbed.errors import ScenarioError
from testbed.models.plugin_api import Dataset

__all__ = [
    "IMAGE_SUFFIXES",
    "DataError",
    "eval_view",
    "labelled_files",
    "load_image_folder",
    "read_classes",
    "read_rgb",
]

IMAGE_SUFFIXES = frozenset({".jpeg", ".jpg", ".png", ".webp", ".bmp", ".tif", ".tiff"})
WNID = re.compile(r"n\d{8}")
RESIZE, CROP = 256, 224
# Pillow refuses larger images outright (a decompression bomb is not a photo)
MAX_PIXELS = 64_000_000


class DataError(ScenarioError):
    """A data folder or file a user gave cannot be used (exit 2)."""


def read_classes(path: Path) -> dict[str, int]:
    """wnid -> output index from a `index<TAB>wnid<TAB>name` file with a header line."""
    classes = {}
    for line in Path(path).read_text().splitlines()[1:]:
        index, wnid, _ = line.split("\t", 2)
        classes[wnid] = int(index)
    return classes


def labelled_files(folder: Path, classes: dict[str, int]) -> list[tuple[Path, int]]:
    """(image file, label) for every image in `folder`, sorted by path: a deterministic
    order, the same on every machine. Files that are not images are passed over."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder of images")
    found = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        rel = path.relative_to(folder)
        if len(rel.parts) > 2:
            raise DataError(
                f"{path}: too deep; allowed: <wnid>_*.JPEG in {folder} or <wnid>/*.JPEG"
            )
        name = rel.parts[0] if len(rel.parts) == 2 else rel.name.split("_", 1)[0]
        if not WNID.fullmatch(name):
            raise DataError(
                f"{path}: cannot tell its class; name files <wnid>_*.JPEG (e.g. "
                f"n01440764_tench.JPEG) or put them in <wnid>/ sub-folders"
            )
        if name not in classes:
            raise DataError(f"{path}: unknown wnid {name!r}: not one of the {len(classes)} classes")
        found.append((path, classes[name]))
    if not found:
        raise DataError(
            f"{folder}: no image (allowed: {', '.join(sorted(IMAGE_SUFFIXES))}) named "
            f"<wnid>_*.JPEG or inside <wnid>/ sub-folders"
        )
    return found


def read_rgb(path: Path):
    """The file as an RGB Pillow image; DataError for anything Pillow cannot decode."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if image.width * image.height > MAX_PIXELS:
                    raise DataError(
                        f"{path}: {image.width}x{image.height} pixels; at most "
                        f"{MAX_PIXELS:,} allowed"
                    )
                image.load()
                return image.convert("RGB")
    except DataError:
        raise
    except Exception as exc:  # Pillow raises many kinds for a broken or foreign file
        raise DataError(f"{path}: unreadable image ({type(exc).__name__}: {exc})") from None


def eval_view(image, resize: int = RESIZE, crop: int = CROP) -> np.ndarray:
    """torchvision's evaluation transform in Pillow: short side to `resize` (the long
    side truncated, as torchvision does), the central `crop` square; (3, crop, crop)."""
    from PIL import Image

    w, h = image.size
    size = (resize, int(resize * h / w)) if w <= h else (int(resize * w / h), resize)
    image = image.resize(size, Image.Resampling.BILINEAR)
    left = round((size[0] - crop) / 2.0)
    top = round((size[1] - crop) / 2.0)
    view = image.crop((left, top, left + crop, top + crop))
    return np.ascontiguousarray(np.asarray(view, dtype=np.uint8).transpose(2, 0, 1))


def load_image_folder(folder: Path, classes: dict[str, int], view: bool = True) -> Dataset:
    """Every labelled image of `folder` as uint8 (N, 3, 224, 224): its evaluation view,
    or (`view=False`, for files that are views already) the image itself, which must
    then be exactly 224x224."""
    files = labelled_files(folder, classes)
    inputs = np.empty((len(files), 3, CROP, CROP), dtype=np.uint8)
    for i, (path, _) in enumerate(files):
        image = read_rgb(path)
        if view:
            inputs[i] = eval_view(image)
        elif image.size != (CROP, CROP):
            raise DataError(f"{path}: {image.width}x{image.height}; expected {CROP}x{CROP}")
        else:
            inputs[i] = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)
    labels = np.array([label for _, label in files], dtype=np.int64)
    return Dataset(inputs=inputs, labels=labels)
