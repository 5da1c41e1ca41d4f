import torch
from torch import nn

from testbed.models.training import save_state_dict, seed_everything


def test_same_seed_same_bytes_whatever_the_file_name(tmp_path):
    paths = []
    for name in ("a.pt", "b.pt"):
        seed_everything(3, threads=1)
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        save_state_dict(model, tmp_path / "sub" / name)
        paths.append(tmp_path / "sub" / name)
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert not list((tmp_path / "sub").glob("*.tmp"))  # written through a rename
    seed_everything(4, threads=1)
    other = tmp_path / "c.pt"
    save_state_dict(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), other)
    assert other.read_bytes() != paths[0].read_bytes()
    state = torch.load(paths[0], weights_only=True)
    assert set(state) == {"0.weight", "0.bias", "2.weight", "2.bias"}


def test_random_resized_crops_are_seeded_in_range_and_flip():
    import numpy as np
    import pytest

    from testbed.models.training import random_resized_crops

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (3, h, w), dtype=np.uint8) for h, w in ((256, 340), (300, 256))]
    a = random_resized_crops(images, (224, 224), torch.Generator().manual_seed(5))
    b = random_resized_crops(images, (224, 224), torch.Generator().manual_seed(5))
    c = random_resized_crops(images, (224, 224), torch.Generator().manual_seed(6))
    assert a.shape == (2, 3, 224, 224) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    # a constant image stays constant whatever the box, flip or resize
    flat = [np.full((3, 256, 300), 77, dtype=np.uint8)]
    assert (random_resized_crops(flat, (32, 32), torch.Generator().manual_seed(1)) == 77).all()
    # a left-right ramp comes out increasing or decreasing: both occur over seeds
    ramp = [np.tile(np.linspace(0, 255, 300).astype(np.uint8), (3, 256, 1))]
    slopes = set()
    for seed in range(12):
        crop = random_resized_crops(ramp, (16, 16), torch.Generator().manual_seed(seed))[0, 0, 8]
        slopes.add(int(np.sign(int(crop[-1]) - int(crop[0]))))
    assert slopes == {1, -1}
    with pytest.raises(Exception):  # noqa: B017 - any error: a 2-D image is no (C, H, W)
        random_resized_crops([np.zeros((8, 8), np.uint8)], (4, 4), torch.Generator())


def test_cuda_without_a_gpu_is_a_missing_environment():
    import pytest

    from testbed.errors import EnvironmentMissing
    from testbed.models.training import resolve_device

    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(EnvironmentMissing, match="no CUDA GPU") as caught:
        resolve_device("cuda")
    assert caught.value.exit_status == 3


def test_resume_ends_with_the_weights_of_an_uninterrupted_run(tmp_path):
    """Two epochs at once, and one epoch then `--resume` to two: the same bytes, for
    DeepCOD with augmentation (crops drawn from the restored generator)."""
    from testbed.offloaders.deepcod import train as deepcod_train

    tiny = [
        "--plugin",
        "fashion_cnn",
        "--ratio",
        "0.1",
        "--limit",
        "128",
        "--batch-size",
        "64",
        "--threads",
        "1",
        "--eval-count",
        "32",
        "--augment",
    ]
    whole, parts = tmp_path / "whole.pt", tmp_path / "parts.pt"
    assert deepcod_train.main([*tiny, "--epochs", "2", "--out", str(whole)]) == 0
    assert deepcod_train.main([*tiny, "--epochs", "1", "--out", str(parts)]) == 0
    first = parts.read_bytes()
    assert (tmp_path / "parts.resume.pt").is_file()
    assert deepcod_train.main([*tiny, "--epochs", "2", "--resume", "--out", str(parts)]) == 0
    assert parts.read_bytes() == whole.read_bytes() != first
    config = torch.load(parts, weights_only=True)["config"]
    assert config["augment"] is True and config["epochs"] == 2
