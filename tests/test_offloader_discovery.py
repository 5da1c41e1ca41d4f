"""How offloaders are found (the package walk, the entry-point group) and the example of
docs/offloaders.md, "Write an offloader", run from the doc's own text."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from importlib.metadata import EntryPoint

import pytest
import yaml

from testbed import offloaders
from testbed.config.scenario import OffloaderSpec, load_scenario
from testbed.errors import PluginError
from testbed.models import plugins
from testbed.offloaders import ParamError, PhaseTimer
from tests.mininet_utils import ROOT, write_scenario

SHIPPED = [
    "local",
    "raw",
    "deepcod",
    "jpeg",
    "webp",
    "neurosurgeon",
    "jalad",
    "bottlenet",
    "feature_png",
    "feature_jpeg",
    "deepdecision",
]


def test_the_package_walk_finds_every_shipped_offloader_in_order():
    assert offloaders.names()[: len(SHIPPED)] == SHIPPED
    assert offloaders.get("bottlenet").__module__ == "testbed.offloaders.bottlenet"


def test_importing_the_package_imports_no_offloader():
    """Discovery waits for the first look-up, so `import testbed.offloaders` stays cheap."""
    code = "import sys, testbed.offloaders; print('testbed.offloaders.jpeg' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


def test_unknown_parameters_get_a_hint():
    with pytest.raises(ParamError) as info:
        offloaders.validate_params("jpeg", {"qualty": 75})
    err = info.value
    assert (err.param, err.hint) == ("qualty", "did you mean 'quality'?")
    assert err.message.startswith("unknown parameter of offloader 'jpeg'; allowed: quality")
    assert str(err) == f"qualty: {err.message}; did you mean 'quality'?"
    with pytest.raises(KeyError):
        offloaders.validate_params("no_such_offloader", {})


# ------------------------------------------------------------------------ third parties


def entry_point(name: str, value: str) -> EntryPoint:
    return EntryPoint(name=name, value=value, group=offloaders.ENTRY_POINT_GROUP)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("missing_package.module:Cls", "failed to load: ModuleNotFoundError"),
        ("testbed.offloaders.base:PhaseTimer", "not an Offloader subclass"),
        ("testbed.offloaders.raw:Raw", "names a class called 'raw'"),
    ],
)
def test_a_broken_third_party_offloader_is_named(monkeypatch, value, message):
    monkeypatch.setattr(
        offloaders, "_entry_points", lambda: {"broken": entry_point("broken", value)}
    )
    assert offloaders.names() == [*SHIPPED, "broken"]
    with pytest.raises(PluginError, match=rf"offloader 'broken' \(entry point .*\) .*{message}"):
        offloaders.get("broken")
    assert offloaders.get("raw").name == "raw"  # the others keep working


def test_a_broken_entry_point_is_a_message_not_a_traceback(tmp_path):
    install(tmp_path, "mypkg", {"broken": "mypkg.nothing:Cls"})
    proc = subprocess.run(
        [sys.executable, "run_scenario.py", "--list-offloaders"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2, proc.stderr
    assert "offloader 'broken' (entry point 'mypkg.nothing:Cls'" in proc.stderr
    assert "Traceback" not in proc.stderr


def install(folder, package: str, entries: dict[str, str], code: str = "") -> None:
    """A package and its distribution's metadata in `folder`, as pip would leave them."""
    (folder / package).mkdir()
    (folder / package / "__init__.py").write_text("")
    if code:
        (folder / package / "offloader.py").write_text(code)
    info = folder / f"{package}-0.0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.0.1\n")
    lines = [f"[{offloaders.ENTRY_POINT_GROUP}]"] + [f"{k} = {v}" for k, v in entries.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")


# ------------------------------------------------------------------- the doc's example


def doc_blocks() -> dict[str, str]:
    """The fenced code blocks of the section "Write an offloader", by language."""
    text = (ROOT / "docs" / "offloaders.md").read_text()
    section = text.split("\n## Write an offloader\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^ *```(\w+)\n(.*?)^ *```$", section, re.MULTILINE | re.DOTALL)
    found = {}
    for language, body in blocks:
        indent = min(len(line) - len(line.lstrip()) for line in body.splitlines() if line)
        found[language] = "\n".join(line[indent:] for line in body.splitlines()) + "\n"
    assert set(found) == {"python", "toml", "yaml"}, set(found)
    return found


@pytest.fixture
def example(tmp_path, monkeypatch):
    """The doc's offloader and entry point, installed into a temporary folder on sys.path."""
    blocks = doc_blocks()
    declared = tomllib.loads(blocks["toml"])["project"]["entry-points"]
    entries = declared[offloaders.ENTRY_POINT_GROUP]
    assert blocks["python"].startswith("# mypkg/offloader.py\n")
    install(tmp_path, "mypkg", entries, blocks["python"])
    monkeypatch.syspath_prepend(str(tmp_path))
    yield blocks
    offloaders._REGISTRY.pop("zlib_raw", None)
    for module in ("mypkg.offloader", "mypkg"):
        sys.modules.pop(module, None)


def test_the_documented_offloader_runs(example):
    assert "zlib_raw" in offloaders.names() and "mypkg.offloader" not in sys.modules
    cls = offloaders.get("zlib_raw")
    assert cls.__module__ == "mypkg.offloader"
    assert offloaders.validate_params("zlib_raw", {}) == {"level": 6}
    with pytest.raises(ParamError) as info:
        offloaders.validate_params("zlib_raw", {"level": 10})
    assert info.value.param == "level"

    plugin = plugins.get("fashion_cnn")
    model, data = plugin.load_model(), plugin.test_data()
    local = offloaders.get("local")(plugin, model)
    zlib_raw = cls(plugin, model, level=9)
    assert zlib_raw.describe() == {"level": 9}
    for sample in data.inputs[:10]:
        timer = PhaseTimer()
        sent = zlib_raw.device(sample, timer)
        assert sent.prediction is None and 0 < len(sent.payload) < sample.nbytes
        assert zlib_raw.edge(sent.payload, timer) == local.device(sample, timer).prediction
        assert set(timer.ms) == {"device", "encode", "decode", "edge"}
    payload = zlib_raw.device(data.inputs[0], PhaseTimer()).payload
    for bad in (b"", b"not zlib", payload[:-4], payload + payload):
        with pytest.raises(ValueError, match="zlib_raw payload"):
            zlib_raw.edge(bad, PhaseTimer())
    with pytest.raises(ParamError):
        cls(plugin, model, level=-1)


def test_a_scenario_names_the_documented_offloader(example, tmp_path):
    given = yaml.safe_load(example["yaml"])
    scenario = load_scenario(write_scenario(tmp_path / "zlib.yaml", **given))
    assert scenario.offloaders[-1] == OffloaderSpec("zlib_raw", {"level": 9})
    assert [spec.name for spec in scenario.offloaders] == ["local", "raw", "zlib_raw"]
