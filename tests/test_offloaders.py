from typing import ClassVar

import numpy as np
import pytest

from testbed import offloaders
from testbed.models import plugins
from testbed.offloaders.base import Offloader, Param, PhaseTimer, warm_kernels


def test_registry_lists_local_and_raw_in_order():
    assert offloaders.names()[:2] == ["local", "raw"]


def test_validate_params_fills_defaults_and_rejects_bad_values():
    class Quality(Offloader):
        name = "quality_test"
        description = "test"
        params: ClassVar = {
            "quality": Param(int, 75, "an integer 1 to 100", lambda q: 1 <= q <= 100)
        }

        def device(self, sample, timer):
            raise NotImplementedError

    offloaders.register(Quality)
    try:
        assert offloaders.validate_params("quality_test", {}) == {"quality": 75}
        with pytest.raises(offloaders.ParamError) as info:
            offloaders.validate_params("quality_test", {"quality": 0})
        err = info.value
        assert (err.param, err.message) == ("quality", "got 0; allowed: an integer 1 to 100")
        with pytest.raises(ValueError):
            offloaders.validate_params("quality_test", {"quality": True})
        with pytest.raises(ValueError):
            offloaders.validate_params("quality_test", {"colour": 1})
    finally:
        offloaders._REGISTRY.pop("quality_test")


def test_local_and_raw_agree_with_the_model():
    plugin = plugins.get("fashion_cnn")
    model, data = plugin.load_model(), plugin.test_data()
    local = offloaders.get("local")(plugin, model)
    raw = offloaders.get("raw")(plugin, model)
    for sample in data.inputs[:20]:
        timer = PhaseTimer()
        on_device = local.device(sample, timer).prediction
        sent = raw.device(sample, timer)
        assert sent.prediction is None and len(sent.payload) == 784
        assert raw.edge(sent.payload, timer) == on_device
        assert set(timer.ms) == {"device", "encode", "decode", "edge"}
    with pytest.raises(ValueError, match="expected 784"):
        raw.edge(b"\0" * 10, PhaseTimer())


def test_kernels_warmed_only_when_an_offloader_needs_them():
    class Needs(Offloader):
        name, description, uses_kernels = "needs", "test", True

        def device(self, sample, timer):
            raise NotImplementedError

    assert warm_kernels([offloaders.get("local"), offloaders.get("raw")]) is None
    seconds = warm_kernels([offloaders.get("raw"), Needs])
    assert isinstance(seconds, float) and seconds > 0
    assert np.isfinite(seconds)
