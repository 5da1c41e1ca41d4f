"""Folders of the user's own photos as a test set (`test_data:`, `--test-data`): both
layouts, labels from the wnids, the evaluation view, and one clear line (exit 2) for
each kind of bad folder, through the real command line as well."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from plugins.mobilenet_v2 import data as mnv2_data
from testbed.models import plugins
from testbed.models.image_folder import DataError, eval_view, labelled_files, load_image_folder

ROOT = Path(__file__).resolve().parent.parent
TRAIN = sorted((mnv2_data.DATA_DIR / "train").iterdir())


def photo(path: Path, size=(300, 200), seed=0) -> Path:
    """A real train photo resized (a different size than the committed one)."""
    source = TRAIN[seed]
    Image.open(source).convert("RGB").resize(size).save(path, quality=95)
    return path


def test_both_layouts_give_labels_from_wnids(tmp_path):
    classes = mnv2_data.classes()
    photo(tmp_path / "n01440764_tench.JPEG")
    (tmp_path / "n01443537").mkdir()
    photo(tmp_path / "n01443537" / "any_name.jpg", seed=1)
    (tmp_path / "README.txt").write_text("not an image: passed over")
    found = labelled_files(tmp_path, classes)
    assert [label for _, label in found] == [0, 1]  # sorted by path
    data = load_image_folder(tmp_path, classes)
    assert data.inputs.shape == (2, 3, 224, 224) and data.inputs.dtype == np.uint8
    assert data.labels.tolist() == [0, 1]


def test_eval_view_matches_torchvision_geometry():
    image = Image.fromarray(
        np.arange(300 * 400 * 3, dtype=np.uint32).astype(np.uint8).reshape(300, 400, 3)
    )
    view = eval_view(image)
    assert view.shape == (3, 224, 224)
    # short side 300 -> 256, long 400 -> int(256 * 400 / 300) = 341; centre offsets
    resized = np.asarray(image.resize((341, 256), Image.BILINEAR)).transpose(2, 0, 1)
    left, top = round((341 - 224) / 2), round((256 - 224) / 2)
    assert np.array_equal(view, resized[:, top : top + 224, left : left + 224])


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: None, "no image"),
        (lambda d: photo(d / "tench.JPEG"), "cannot tell its class"),
        (lambda d: photo(d / "n99999999_nothing.JPEG"), "unknown wnid 'n99999999'"),
        (
            lambda d: (d / "n01440764_tench.JPEG").write_bytes(b"\xff\xd8 not a jpeg"),
            "unreadable image",
        ),
        (
            lambda d: (
                (d / "n01440764" / "deep").mkdir(parents=True)
                or photo(d / "n01440764" / "deep" / "a.jpg")
            ),
            "too deep",
        ),
    ],
)
def test_bad_folders_name_the_file(tmp_path, make, message):
    make(tmp_path)
    with pytest.raises(DataError, match=message) as caught:
        load_image_folder(tmp_path, mnv2_data.classes())
    assert caught.value.exit_status == 2
    assert "\n" not in str(caught.value)


def test_a_folder_replaces_the_plugins_test_set(tmp_path):
    plugin = plugins.get("mobilenet_v2")
    photo(tmp_path / "n01440764_a.JPEG", (224, 224))
    data = plugins.test_data(plugin, tmp_path)
    assert len(data) == 1 and data.labels.tolist() == [0]
    assert len(plugins.test_data(plugin, None)) == 204
    with pytest.raises(Exception, match="takes no test_data folder"):
        plugins.test_data(plugins.get("fashion_cnn"), tmp_path)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_training_command_refuses_a_bad_folder_in_one_line(tmp_path):
    photo(tmp_path / "n99999999_x.JPEG")
    out = run_cli(
        "-m",
        "testbed.offloaders.bottlenet.train",
        "--plugin",
        "mobilenet_v2",
        "--split",
        "5",
        "--epochs",
        "1",
        "--test-data",
        str(tmp_path),
        "--out",
        str(tmp_path / "b.pt"),
    )
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().count("\n") == 0 and "unknown wnid" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "b.pt").exists()
