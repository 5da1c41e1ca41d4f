"""DeepCOD's networks and its training command (the `deepcod` offloader builds on
them; end-to-end figures belong to its own tests)."""

import pytest
import torch

from testbed import errors
from testbed.models import plugins
from testbed.offloaders.deepcod import train as deepcod_train
from testbed.offloaders.deepcod.model import (
    DeepCOD,
    SamplingEncoder,
    SoftToHardQuantizer,
    encoder_channels,
    pad_to_patches,
)


def test_encoder_channels_follow_the_official_rule():
    assert encoder_channels(3, 0.1) == 4  # int(3*16*0.1)
    assert encoder_channels(1, 0.1) == 1
    assert encoder_channels(1, 0.01) == 1  # at least one
    assert SamplingEncoder(3, 0.1)(torch.rand(2, 3, 224, 224)).shape == (2, 4, 56, 56)


def test_quantizer_outputs_centres_and_passes_gradients():
    quantizer = SoftToHardQuantizer(8)
    x = torch.randn(4, 1, 7, 7, requires_grad=True)
    q = quantizer(x)
    centres = set(quantizer.centres.detach().tolist())
    assert set(q.detach().flatten().tolist()) <= centres  # hard values forward
    q.sum().backward()
    assert x.grad.abs().sum() > 0  # soft assignment backward (straight through)
    assert quantizer.centres.grad.abs().sum() > 0  # the centres are learned
    indices = quantizer.indices(x)
    assert torch.equal(quantizer.centres[indices], q.detach())


def test_orthogonality_term_can_be_driven_down():
    encoder = SamplingEncoder(3, 0.1)
    optimiser = torch.optim.Adam(encoder.parameters(), lr=1e-2)
    encoder(torch.rand(1, 3, 8, 8))  # spectral norm's first power iteration
    before = encoder.orthogonality_loss().item()
    for _ in range(200):
        optimiser.zero_grad()
        encoder.orthogonality_loss().backward()
        optimiser.step()
    assert encoder.orthogonality_loss().item() < 0.1 * before


def test_decoder_starts_without_attention_and_restores_the_input_shape():
    model = DeepCOD(1, 0.1)
    attention = model.decoder.net[1]
    assert attention.gamma.item() == 0.0
    out = model(torch.rand(2, 1, 28, 28))
    assert out.shape == (2, 1, 28, 28) and out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("shape", [(1, 40, 101), (3, 13, 7), (2, 5, 12)])
def test_odd_sizes_are_padded_and_cropped_back(shape):
    torch.manual_seed(0)
    model = DeepCOD(shape[0], 0.25, width=8, bounded=False).eval()
    x = torch.randn(2, *shape)
    with torch.no_grad():
        y = model.encoder(x)
        out = model(x)
        full = model.decoder(model.quantizer(y))
    h, w = (-(-n // 4) for n in shape[1:])
    assert y.shape == (2, model.encoder.out_channels, h, w)
    assert out.shape == x.shape
    assert torch.equal(out, full[..., : shape[1], : shape[2]])  # a crop of the 4h x 4w output


def test_padding_replicates_the_last_row_and_column():
    torch.manual_seed(0)
    encoder = SamplingEncoder(1, 0.25).eval()
    x = torch.randn(1, 1, 6, 9)
    padded = pad_to_patches(x)
    assert padded.shape == (1, 1, 8, 12)
    assert torch.equal(padded[..., :6, :9], x)
    assert torch.equal(padded[..., 6:, :9], x[..., 5:6, :].expand(1, 1, 2, 9))
    assert torch.equal(padded[..., 9:], padded[..., 8:9].expand(1, 1, 8, 3))  # and corner
    with torch.no_grad():
        assert torch.equal(encoder(x), encoder.conv(padded))
        zeros = torch.nn.functional.pad(x, (0, 3, 0, 2))
        assert not torch.equal(encoder(x), encoder.conv(zeros))


def test_sizes_that_fit_are_not_padded():
    torch.manual_seed(0)
    model = DeepCOD(3, 0.1, width=8).eval()
    x = torch.rand(2, 3, 16, 28)
    assert pad_to_patches(x) is x
    with torch.no_grad():
        y = model.quantizer(model.encoder(x))
        assert torch.equal(model.encoder(x), model.encoder.conv(x))
        assert torch.equal(model.decoder(y, (16, 28)), model.decoder(y))
        assert torch.equal(model(x), model.decoder.net(y))


def test_split_model_takes_odd_features_and_refuses_flat_ones():
    plugin = plugins.get("speech_kws")
    model = plugin.load_model()
    assert deepcod_train.split_model(plugin, model, 1)[2] == (1, 40, 101)
    with pytest.raises(
        errors.TestbedError, match="CxHxW tensor at split 0 of 'speech_kws'; it is 1x16000"
    ):
        deepcod_train.split_model(plugin, model, 0)


def test_training_command_writes_a_loadable_artefact(tmp_path):
    out = tmp_path / "deepcod.pt"
    status = deepcod_train.main(
        [
            "--plugin",
            "fashion_cnn",
            "--epochs",
            "1",
            "--limit",
            "256",
            "--batch-size",
            "64",
            "--threads",
            "1",
            "--out",
            str(out),
        ]
    )
    assert status == 0
    saved = torch.load(out, weights_only=True)
    assert saved["config"]["ratio"] == 0.1 and saved["config"]["plugin"] == "fashion_cnn"
    assert "padding" not in saved["config"]  # 28x28 fits: the format of the older artefacts
    model = DeepCOD(1, 0.1)
    model.load_state_dict(saved["state_dict"])


def test_artefact_sits_beside_the_plugin():
    path = deepcod_train.artefact_path(plugins.get("fashion_cnn"), 0.1)
    assert path.parent.name == "fashion_cnn" and path.name == "deepcod-r0.1.pt"
