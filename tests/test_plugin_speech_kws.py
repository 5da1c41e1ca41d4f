"""The speech_kws plugin: its synthesized data, its log-mel stage, its stages, the weights.

The test split is read from the cache (`cache_dir("speech_kws")`) and synthesized there
first when missing (240 clips, ~10 s on 2 cores). Nothing is skipped when flite, espeak-ng
or sox is missing: the project's setup installs them, so their absence is a failure, and
the PluginError then names the apt packages.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from plugins.speech_kws import synth
from plugins.speech_kws.features import FEATURE_SHAPE, LogMel, mel_filterbank, mel_to_hz
from plugins.speech_kws.model import STAGE_OUTPUT_SHAPES
from testbed.errors import PluginError
from testbed.models import plugins
from testbed.models.training import count_correct
from tests.helpers import check_trained_weights, plugin_fixtures, stage_outputs

# plugins/speech_kws/README.md: accuracy of the committed weights on the held-out voices
DOCUMENTED_TEST_ACCURACY = 0.7583


plugin, test_data = plugin_fixtures("speech_kws")


def test_registered(plugin):
    assert "speech_kws" in plugins.available()
    assert plugin.name == "speech_kws"
    assert plugin.num_classes == len(synth.CLASSES) == 12
    assert plugin.metric == "accuracy"
    spec = plugin.input_spec
    assert spec.shape == (1, 16_000) and spec.dtype == "int16"
    assert (spec.low, spec.high) == (-32768, 32767)


def test_voice_split():
    assert not set(synth.TRAIN_VOICES) & set(synth.TEST_VOICES)
    train, test = synth.make_plan("train"), synth.make_plan("test")
    assert {s.voice for s in test} == set(synth.TEST_VOICES)
    assert {s.voice for s in train} == set(synth.TRAIN_VOICES)
    assert not {s.voice for s in train} & {s.voice for s in test}


def test_test_data(plugin, test_data):
    n = len(synth.TEST_VOICES) * len(synth.CLASSES) * synth.CLIPS_PER_CLASS["test"]
    assert len(test_data) == n
    assert test_data.inputs.shape == (n, *plugin.input_spec.shape)
    assert test_data.inputs.dtype == np.int16
    assert test_data.labels.dtype == np.int64
    assert np.bincount(test_data.labels).tolist() == [n // 12] * 12
    peaks = np.abs(test_data.inputs.astype(np.int32)).max(axis=(1, 2))
    assert (peaks > 0).all() and peaks.max() > 10_000  # sound, not placeholders


def test_generator_deterministic(test_data):
    plan = synth.make_plan("test", seed=0)
    assert plan == synth.make_plan("test", seed=0)
    assert plan != synth.make_plan("test", seed=1)
    first = synth.render_all(plan[:6], progress=False)
    again = synth.render_all(plan[:6], progress=False)
    assert first.tobytes() == again.tobytes()
    assert first.tobytes() == test_data.inputs[:6].tobytes()  # and equal to the cache


def test_mel_filterbank():
    fb = mel_filterbank()
    assert fb.shape == (40, 257) and fb.min() >= 0 and fb.max() <= 1
    assert (fb.sum(axis=1) > 0).all()  # no empty filter
    peaks = fb.argmax(axis=1)
    assert (np.diff(peaks) >= 0).all()  # centres ascend


def test_feature_stage(plugin):
    # a 1 kHz tone puts most of its energy into the filter centred nearest to 1 kHz
    t = np.arange(16_000) / 16_000
    tone = (0.5 * 32767 * np.sin(2 * np.pi * 1000 * t)).astype(np.int16)
    with torch.inference_mode():
        f = LogMel()(plugin.to_tensor(tone[None, None, :]))
    assert tuple(f.shape) == (1, *FEATURE_SHAPE) == (1, 1, 40, 101)
    band = int(f[0, 0].mean(dim=1).argmax())
    from plugins.speech_kws.features import F_MAX, F_MIN, hz_to_mel

    centres = mel_to_hz(np.linspace(hz_to_mel(F_MIN), hz_to_mel(F_MAX), 42))[1:-1]
    assert band == int(np.abs(centres - 1000).argmin())


def test_stages_chain(plugin):
    stages = plugin.build_stages()
    k = plugin.split_points
    assert k == (1, 2, 3, 4) and all(1 <= p < len(stages) for p in k)
    spec = plugin.input_spec
    raw = np.random.default_rng(0).integers(-3000, 3000, (3, *spec.shape)).astype(np.int16)
    x = plugin.to_tensor(raw)
    assert x.dtype == torch.float32 and x.abs().max() <= 1
    outputs = stage_outputs(plugin, stages, raw)
    assert [tuple(o.shape[1:]) for o in outputs] == list(STAGE_OUTPUT_SHAPES)
    assert outputs[-1].shape == (3, plugin.num_classes)
    # a split after stage 0 sends features, which are smaller than the waveform
    assert np.prod(FEATURE_SHAPE) * 4 < raw[0].nbytes


def test_load_model(plugin):
    check_trained_weights(plugin, max_bytes=1_000_000)


def test_weights_accuracy(plugin, test_data):
    correct = count_correct(plugin, plugin.load_model(), test_data)
    assert correct / len(test_data) >= DOCUMENTED_TEST_ACCURACY - 0.02


def test_missing_tools(plugin, tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPCOD_TESTBED_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path))  # no flite, espeak-ng or sox here
    with pytest.raises(PluginError, match="apt-get install flite espeak-ng sox") as info:
        plugin.test_data()
    assert "flite" in str(info.value) and "sox" in str(info.value)
