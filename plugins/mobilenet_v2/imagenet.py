"""Make the committed ImageNet photos from the originals:

    python -m plugins.mobilenet_v2.imagenet --source DIR [--out plugins/mobilenet_v2/imagenet]

DIR holds `imagenet-samples/` (814 ImageNet photos, one per class, `<wnid>_<name>.JPEG`)
and `imagenet-classes.tsv`: the project's shared data (`datasets/` of the shared folder),
from the public repository EliSchwartz/imagenet-sample-images. Users' clones have only
what this writes, so the plugin never needs the originals.

Split (deterministic, by class, so no photo or class is in both): a photo is in the test
split when its class index is a multiple of 4 (204 photos), in the train split otherwise
(610). Test photos are stored as their ImageNet evaluation view (short side 256, central
224x224; `testbed.models.image_folder.eval_view`) in lossless PNG, exactly what is scored. Train
photos keep their whole frame, the short side resized to 256 (bilinear, antialiased), as
JPEG quality 90: training augments them with random resized crops and flips. About 34 MB.
The classes file is copied as `classes.tsv`.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from tqdm import tqdm

from testbed.models.image_folder import RESIZE, DataError, eval_view, labelled_files, read_classes

__all__ = ["OUT", "TEST_EVERY", "is_test", "main", "make"]

OUT = Path(__file__).with_name("imagenet")
TEST_EVERY = 4
TRAIN_QUALITY = 90


def is_test(label: int) -> bool:
    return label % TEST_EVERY == 0


def train_frame(image):
    """The whole photo with its short side at RESIZE (the long side truncated)."""
    from PIL import Image

    w, h = image.size
    size = (RESIZE, int(RESIZE * h / w)) if w <= h else (int(RESIZE * w / h), RESIZE)
    return image.resize(size, Image.BILINEAR)


def make(source: Path, out: Path = OUT) -> dict[str, int]:
    """Write test/ and train/ and classes.tsv into `out`; how many photos each split has."""
    from PIL import Image

    from testbed.models.image_folder import read_rgb

    classes = read_classes(source / "imagenet-classes.tsv")
    files = labelled_files(source / "imagenet-samples", classes)
    for split in ("test", "train"):
        shutil.rmtree(out / split, ignore_errors=True)
        (out / split).mkdir(parents=True)
    shutil.copyfile(source / "imagenet-classes.tsv", out / "classes.tsv")
    counts = {"test": 0, "train": 0}
    for path, label in tqdm(files, desc="photos", unit="photo"):
        image = read_rgb(path)
        if is_test(label):
            view = Image.fromarray(eval_view(image).transpose(1, 2, 0))
            view.save(out / "test" / f"{path.stem}.png", optimize=True)
            counts["test"] += 1
        else:
            train_frame(image).save(out / "train" / f"{path.stem}.jpg", quality=TRAIN_QUALITY)
            counts["train"] += 1
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m plugins.mobilenet_v2.imagenet",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--source",
        type=Path,
        required=True,
        help="folder with imagenet-samples/ and imagenet-classes.tsv",
    )
    parser.add_argument("--out", type=Path, default=OUT, help="default: %(default)s")
    args = parser.parse_args(argv)
    if not (args.source / "imagenet-classes.tsv").is_file():
        parser.error(f"{args.source}: no imagenet-classes.tsv")
    try:
        counts = make(args.source, args.out)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_status
    print(f"wrote {counts['test']} test and {counts['train']} train photos to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
