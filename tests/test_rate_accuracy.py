"""`python -m testbed.experiment.rate_accuracy` on fashion_cnn: the curve is what the points say,
the points are what the unmodified model and the codecs say, and bad input is one line."""

from __future__ import annotations

import csv
import itertools
import re
from collections import defaultdict

import numpy as np
import pytest
import torch

from testbed.agents.protocol import HEADER
from testbed.experiment import rate_accuracy
from testbed.models import plugins
from testbed.models.plugin_api import Dataset

COUNT = 40
FAMILIES = "raw,local,jpeg,jalad,bottlenet,deepcod"


def read(path):
    with path.open() as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def fashion():
    torch.set_num_threads(1)
    plugin = plugins.get("fashion_cnn")
    model = plugin.load_model()
    data = plugin.test_data()
    inputs, labels = data.inputs[:COUNT], data.labels[:COUNT]
    with torch.inference_mode():
        unmodified = model(plugin.to_tensor(inputs)).argmax(dim=1).numpy()
    return plugin, inputs, labels, unmodified


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("rate_accuracy")
    argv = ["--plugin", "fashion_cnn", "--count", str(COUNT), "--offloaders", FAMILIES]
    assert rate_accuracy.main([*argv, "--out", str(out)]) == 0
    return out, read(out / "points.csv"), read(out / "curve.csv")


def by_config(points):
    groups = defaultdict(list)
    for point in points:
        groups[point["config"]].append(point)
    return groups


def test_curve_is_the_points_summarized(run, fashion):
    _, points, curve = run
    *_, labels, unmodified = fashion
    reference = float(np.mean(unmodified == labels))
    groups = by_config(points)
    assert sorted(groups) == sorted(row["config"] for row in curve)
    for row in curve:
        mine = groups[row["config"]]
        assert [int(p["sample"]) for p in mine] == list(range(COUNT))
        accuracy = np.mean([int(p["correct"]) for p in mine])
        assert int(row["n"]) == len(mine)
        assert float(row["mean_bytes"]) == pytest.approx(np.mean([int(p["bytes"]) for p in mine]))
        assert float(row["accuracy"]) == pytest.approx(accuracy, abs=1e-4)
        assert float(row["agreement"]) == pytest.approx(
            np.mean([int(p["agrees"]) for p in mine]), abs=1e-4
        )
        assert float(row["drop_pp"]) == pytest.approx(100 * (reference - accuracy), abs=1e-3)
        assert float(row["ci_low"]) <= accuracy <= float(row["ci_high"])


def test_points_are_scored_against_labels_and_the_unmodified_model(run, fashion):
    _, points, _ = run
    *_, labels, unmodified = fashion
    for point in points:
        sample, prediction = int(point["sample"]), int(point["prediction"])
        assert int(point["label"]) == labels[sample]
        assert int(point["correct"]) == (prediction == labels[sample])
        assert int(point["agrees"]) == (prediction == unmodified[sample])
        payload = int(point["payload_bytes"])
        assert int(point["bytes"]) == (payload + HEADER.size if payload else 0)


def test_jpeg_bytes_grow_with_quality(run):
    _, _, curve = run
    jpeg = {
        int(re.fullmatch(r"jpeg q(\d+)", r["config"])[1]): float(r["mean_bytes"])
        for r in curve
        if r["offloader"] == "jpeg"
    }
    assert len(jpeg) == len(rate_accuracy.QUALITIES)
    sizes = [jpeg[q] for q in sorted(jpeg)]
    assert all(a < b for a, b in itertools.pairwise(sizes)), sizes


def test_raw_and_local_are_the_unmodified_model(run, fashion):
    _, _, curve = run
    _, inputs, labels, unmodified = fashion
    rows = {r["config"]: r for r in curve}
    reference = float(np.mean(unmodified == labels))
    for name in ("raw", "local"):
        assert float(rows[name]["accuracy"]) == pytest.approx(reference, abs=1e-4)
        assert float(rows[name]["agreement"]) == 1.0
    assert float(rows["raw"]["mean_bytes"]) == inputs[0].nbytes + HEADER.size
    assert float(rows["local"]["mean_bytes"]) == 0


def test_configurations_follow_the_artefacts(run, fashion):
    out, _, curve = run
    plugin = fashion[0]
    keys = rate_accuracy.artefact_keys(plugin)
    ratios = sorted(float(k.removeprefix("deepcod-r")) for k in keys if k.startswith("deepcod-r"))
    deepcod = sorted(
        float(r["config"].removeprefix("deepcod r")) for r in curve if r["offloader"] == "deepcod"
    )
    assert deepcod == ratios
    assert sum(r["offloader"] == "bottlenet" for r in curve) == sum(
        k.startswith("bottlenet-") for k in keys
    )
    jalad = [r for r in curve if r["offloader"] == "jalad"]
    assert len(jalad) == len(plugin.split_points) * 8
    text = (out / "curve.md").read_text()
    for ratio in set(rate_accuracy.DEEPCOD_RATIOS) - set(ratios):
        assert f"r{ratio:g}" in text.split("| offloader")[0]  # said missing, in the header
    assert "--count 40" in text
    table = [line.split(" | ") for line in text.splitlines() if line.startswith("| ")][1:]
    order = [(rate_accuracy.FAMILIES.index(c[0][2:]), float(c[3])) for c in table]
    assert order == sorted(order)
    assert (out / "rate_accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_test_data_replaces_the_test_set(tmp_path, fashion, monkeypatch):
    _, inputs, labels, _ = fashion
    folder = tmp_path / "photos"
    given = Dataset(inputs[5:1:-1].copy(), labels[5:1:-1].copy())
    asked = []

    def test_data(plugin, where):
        asked.append(where)
        return given

    monkeypatch.setattr(plugins, "test_data", test_data)
    out = tmp_path / "out"
    argv = ["--plugin", "fashion_cnn", "--test-data", str(folder), "--offloaders", "raw"]
    assert rate_accuracy.main([*argv, "--out", str(out)]) == 0
    assert asked == [folder]
    points = read(out / "points.csv")
    assert [int(p["label"]) for p in points] == list(given.labels)
    assert str(folder) in (out / "curve.md").read_text()


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--plugin", "no_such_plugin"], "no_such_plugin"),
        (["--plugin", "fashion_cnn", "--offloaders", "jpeg,gzip"], "gzip"),
        (["--plugin", "fashion_cnn", "--count", "0"], "--count"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, words):
    with pytest.raises(SystemExit) as exited:
        status = rate_accuracy.main([*argv, "--out", str(tmp_path)])
        raise SystemExit(status)
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and words in err[0], err
    assert not (tmp_path / "curve.csv").exists()
