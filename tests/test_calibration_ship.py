"""Calibration shipped with a plugin (testbed/offloaders/calibration.py): found when the
user's cache lacks it, under the same key, and written by the `--ship` command."""

import json

import pytest

from testbed.offloaders import calibration
from testbed.offloaders.calibration import Calibrator

pytestmark = pytest.mark.usefixtures("cache")  # conftest.py: a cache of its own


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    folder = tmp_path / "shipped"
    folder.mkdir()
    monkeypatch.setattr(calibration, "shipped_dir", lambda plugin: folder)
    return folder


def model_run(plugin, model, calls):
    def run(option, inputs):
        calls.append(option)
        return model(plugin.to_tensor(inputs)), [11] * len(inputs)

    return run


def test_a_shipped_file_replaces_the_measurement(fashion, shipped):
    plugin, model, _ = fashion
    calls: list = []
    first = Calibrator(plugin, model, "test", model_run(plugin, model, calls), count=20)
    assert first.score("same").mean_bytes == 11 and calls == ["same"]
    first.write(first.shipped)
    first.path.unlink()  # a fresh clone: an empty user cache, the plugin's files

    again = Calibrator(plugin, model, "test", model_run(plugin, model, calls), count=20)
    assert again.path.name == first.path.name and again.shipped.is_file()
    assert again.score("same") == first.score("same")
    assert calls == ["same"]  # read, not measured
    assert json.loads(again.shipped.read_text())["key"] == again.key


def test_a_changed_key_is_not_read_from_the_shipped_file(fashion, shipped):
    plugin, model, _ = fashion
    calls: list = []
    first = Calibrator(plugin, model, "test", model_run(plugin, model, calls), count=20)
    first.score("same")
    first.write(first.shipped)
    first.path.unlink()
    other = Calibrator(plugin, model, "test", model_run(plugin, model, calls), count=30)
    assert other.path.name != first.path.name
    other.score("same")
    assert calls == ["same", "same"]  # another sample count: measured again


def test_the_user_cache_wins_and_a_damaged_shipped_file_is_ignored(fashion, shipped):
    plugin, model, _ = fashion
    calls: list = []
    cal = Calibrator(plugin, model, "test", model_run(plugin, model, calls), count=20)
    cal.shipped.write_text("{not json")
    assert Calibrator(plugin, model, "test", cal.run, count=20).score("x").mean_bytes == 11
    cal.shipped.write_text(json.dumps({"scores": {'"x"': {"drop_pp": 9, "mean_bytes": 1}}}))
    # the user's cache (written by the measurement above) holds "x" already
    assert Calibrator(plugin, model, "test", cal.run, count=20).score("x").mean_bytes == 11
    assert calls == ["x"]


def test_ship_writes_what_the_offloaders_used(shipped, capsys, monkeypatch):
    assert (
        calibration.main(
            ["--plugin", "fashion_cnn", "--offloaders", "jpeg", "--samples", "10", "--ship"]
        )
        == 0
    )
    written = sorted(shipped.iterdir())
    assert [p.name.split("-")[:2] for p in written] == [["fashion_cnn", "jpeg"]]
    assert str(written[0]) in capsys.readouterr().out
    saved = json.loads(written[0].read_text())
    assert saved["plugin"] == "fashion_cnn" and saved["key"][4] == 10 and saved["scores"]
    # a fresh cache now measures nothing for the same offloader
    for path in calibration.cache_dir("calibration").iterdir():
        path.unlink()

    def no_data(self):
        raise AssertionError("measured although shipped")

    monkeypatch.setattr(Calibrator, "_calibration_set", no_data)
    assert (
        calibration.main(
            ["--plugin", "fashion_cnn", "--offloaders", "jpeg", "--samples", "10", "--ship"]
        )
        == 0
    )
    assert json.loads(written[0].read_text())["scores"] == saved["scores"]


def test_ship_refuses_unknown_names(capsys):
    with pytest.raises(SystemExit) as exit_:
        calibration.main(["--plugin", "fashion_cnn", "--offloaders", "nosuch", "--ship"])
    assert exit_.value.code == 2 and "nosuch" in capsys.readouterr().err
    assert calibration.main(["--plugin", "nosuch", "--offloaders", "jpeg", "--ship"]) == 2


def test_lowbw_calibrates_from_what_mobilenet_v2_ships(monkeypatch):
    """The README's main job measures nothing in a fresh clone: scenarios/lowbw.yaml's
    calibrated offloaders find every option they need in plugins/mobilenet_v2/calibration/
    (a changed key, weights or VERSION, fails here until shipped again)."""
    from testbed import offloaders
    from testbed.models import plugins

    def no_data(self):
        raise AssertionError(f"{self.path.name} is not shipped: run the --ship command")

    monkeypatch.setattr(Calibrator, "_calibration_set", no_data)
    plugin = plugins.get("mobilenet_v2")
    model = plugin.load_model()
    for name in ("jpeg", "webp", "jalad"):
        params = offloaders.validate_params(name, {"calibration_samples": 100})
        offloaders.get(name)(plugin, model, **params).calibrate()
