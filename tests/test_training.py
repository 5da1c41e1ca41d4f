import torch
from torch import nn

from testbed.training import save_state_dict, seed_everything


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
