"""DeepCOD's networks and its training command (the `deepcod` offloader builds on
them; end-to-end figures belong to its own tests)."""

import copy

import pytest
import torch

from testbed import errors
from testbed.models import plugins
from testbed.offloaders.deepcod import train as deepcod_train
from testbed.offloaders.deepcod.model import (
    DeepCOD,
    FusedDecoder,
    SamplingEncoder,
    SoftToHardQuantizer,
    encoder_channels,
    pad_to_patches,
)
from testbed.offloaders.deepcod.model import _upsampled_conv_weight as upsampled_conv_weight


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
        full = model.decode(model.quantizer(y))
        reference = model.decode(model.quantizer(y), reference=True)
    h, w = (-(-n // 4) for n in shape[1:])
    assert y.shape == (2, model.encoder.out_channels, h, w)
    assert out.shape == x.shape
    assert torch.equal(out, full[..., : shape[1], : shape[2]])  # a crop of the 4h x 4w output
    torch.testing.assert_close(full, reference, rtol=0, atol=1e-5)


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
        assert torch.equal(model(x), model.decode(y))
        torch.testing.assert_close(model(x), model.decoder.net(y), rtol=0, atol=1e-5)


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


# --- The edge's decoder (FusedDecoder): the same function as the modules ------------------


def trained_looking(model: DeepCOD, seed: int = 0) -> DeepCOD:
    """Batch norms with running statistics and affine terms far from the identity, and an
    attention gain away from 0: a fresh model's are trivial and would hide a wrong fold."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.decoder.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                for t in (module.running_mean, module.weight, module.bias):
                    t.copy_(torch.randn(t.shape, generator=generator))
                module.running_var.copy_(
                    torch.rand(module.running_var.shape, generator=generator) + 0.2
                )
        model.decoder.net[1].gamma.fill_(0.7)
    return model.eval()


def test_upsampling_then_3x3_conv_is_one_transposed_conv():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 7, 9, dtype=torch.float64)
    weight = torch.randn(3, 5, 3, 3, dtype=torch.float64)
    bias = torch.randn(3, dtype=torch.float64)
    f = torch.nn.functional
    upsampled = f.conv2d(f.interpolate(x, scale_factor=2, mode="nearest"), weight, bias, padding=1)
    once = f.conv_transpose2d(x, upsampled_conv_weight(weight), bias, stride=2, padding=1)
    torch.testing.assert_close(once, upsampled, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("channels", "size", "pool", "bounded", "scale"),
    [
        (3, (224, 224), 4, True, 1.0),  # MobileNetV2's artefacts
        (1, (28, 28), 1, True, 1.0),  # fashion_cnn's: the paper's attention
        (3, (30, 42), 4, True, 255.0),  # pooled cells cut by the edge, mtcnn's scale
        (1, (40, 101), 1, False, 1.0),  # speech_kws's features: padded, unbounded
    ],
)
def test_fused_decoder_computes_the_modules_function(channels, size, pool, bounded, scale):
    torch.manual_seed(0)
    model = DeepCOD(channels, 0.25, width=16, bounded=bounded, scale=scale, attention_pool=pool)
    model = trained_looking(model)
    y = model.quantizer(torch.randn(2, model.encoder.out_channels, *(-(-n // 4) for n in size)))
    with torch.inference_mode():
        fast = model.decode(y, size)
        reference = model.decode(y, size, reference=True)
    assert fast.shape == reference.shape == (2, channels, *size)
    assert fast.is_contiguous()  # the plugin's model sees what it saw before
    torch.testing.assert_close(fast, reference, rtol=0, atol=1e-5 * scale)
    assert not torch.equal(reference, model.decode(y, size, reference=True) * 0)  # not trivial


def test_fused_decoder_follows_the_weights_and_stays_out_of_training():
    torch.manual_seed(0)
    model = trained_looking(DeepCOD(3, 0.1, width=8, attention_pool=2))
    y = model.quantizer(torch.randn(1, model.encoder.out_channels, 6, 6))
    with torch.inference_mode():
        first = model.decode(y)
        assert model.fused_decoder() is model.fused_decoder()  # built once per weights
    other = trained_looking(DeepCOD(3, 0.1, width=8, attention_pool=2), seed=1)
    model.load_state_dict(other.state_dict())
    with torch.inference_mode():
        second = model.decode(y)
        torch.testing.assert_close(second, other.decode(y, reference=True), rtol=0, atol=1e-5)
    assert not torch.allclose(first, second)
    model.load_state_dict(trained_looking(copy.deepcopy(model), seed=2).state_dict(), assign=True)
    with torch.inference_mode():
        torch.testing.assert_close(
            model.decode(y), model.decode(y, reference=True), rtol=0, atol=1e-5
        )
    with torch.no_grad():  # written in place, as an optimiser step does
        model.decoder.net[-2].bias.add_(0.5)
        torch.testing.assert_close(
            model.decode(y), model.decode(y, reference=True), rtol=0, atol=1e-5
        )
    assert model.decode(y).requires_grad  # gradients asked for: the modules
    model.train()
    with torch.no_grad():
        batch = model.quantizer(torch.randn(2, model.encoder.out_channels, 6, 6))
        twin = copy.deepcopy(model)  # training steps spectral norm's state and batch norm's
        assert torch.equal(model.decode(batch), twin.decoder(batch))


def test_fused_decoder_skips_attention_whose_gain_is_zero():
    model = DeepCOD(3, 0.1, width=8).eval()  # gamma starts at 0
    assert not FusedDecoder(model.decoder).attend
    assert trained_looking(model) and FusedDecoder(model.decoder).attend
