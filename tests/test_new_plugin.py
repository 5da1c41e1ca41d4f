"""`python -m testbed.models.new_plugin`: the skeleton it writes is a working plugin, once
trained: installed (non-editable, so its weights travel as package data), it is listed,
passes `check_plugin` and a scenario with it passes `--check`."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from testbed.errors import ScenarioError
from testbed.models.new_plugin import main, write_skeleton
from tests.mininet_utils import ROOT, write_scenario

CHECK = """
from testbed.models import plugins
from testbed.models.plugin_api import check_plugin
p = plugins.get("skel_toy")
print(check_plugin(p), p.artefacts["weights"])
p.load_model()
"""


def python(*args, env=None, cwd=ROOT):
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def next_lines(lines: list[str]) -> list[str]:
    """The indented lines that continue a plugin's entry in `--list-plugins`."""
    out = []
    for line in lines:
        if not line.startswith(" "):
            break
        out.append(line)
    return out


def test_skeleton_trains_installs_and_passes_the_checks(tmp_path):
    project = write_skeleton("skel_toy", tmp_path / "src")
    env = {**os.environ, "PYTHONPATH": f"{project}{os.pathsep}{ROOT}"}
    trained = python("-m", "skel_toy.train", "--steps", "60", env=env, cwd=project)
    assert trained.returncode == 0, trained.stderr
    assert (project / "skel_toy" / "weights.pt").is_file()
    site = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run([*pip, "--target", str(site), str(project)], check=True, capture_output=True)
    assert (site / "skel_toy" / "weights.pt").is_file()  # package data
    env["PYTHONPATH"] = f"{site}{os.pathsep}{ROOT}"
    checked = python("-c", CHECK, env=env)
    assert checked.returncode == 0, checked.stderr
    assert "[(8, 8, 8), (16, 4, 4), (4,)]" in checked.stdout and str(site) in checked.stdout
    listed = python("run_scenario.py", "--list-plugins", env=env)
    entry = listed.stdout.split("\nskel_toy ", 1)[1].split("\n")
    notes = "\n".join([entry[0], *next_lines(entry[1:])])
    assert "split points (feature shape): 1 (8x8x8), 2 (16x4x4)" in notes
    assert "MISSING DeepCOD networks" in notes and "MISSING weights" not in notes
    scenario = write_scenario(tmp_path / "s.yaml", model="skel_toy", offloaders=["local", "raw"])
    dry = python("run_scenario.py", "--check", str(scenario), env=env)
    assert dry.returncode == 0, dry.stderr
    assert "model skel_toy, 20 samples x 2 offloaders" in dry.stdout


def test_untrained_skeleton_says_how_to_train_it(tmp_path):
    project = write_skeleton("skel_toy", tmp_path)
    env = {**os.environ, "PYTHONPATH": f"{project}{os.pathsep}{ROOT}"}
    code = "import skel_toy; skel_toy.make_plugin().load_model()"
    proc = python("-c", code, env=env)
    assert "train them with: python -m skel_toy.train" in proc.stderr


def test_refuses_to_overwrite_and_bad_names(tmp_path, capsys):
    project = write_skeleton("skel_toy", tmp_path)
    (project / "README.md").write_text("mine")
    assert main(["skel_toy", "--dir", str(tmp_path)]) == 2
    assert "exists; not overwritten" in capsys.readouterr().err
    assert (project / "README.md").read_text() == "mine"
    for name in ("fashion_cnn", "My-Model", "class"):
        with pytest.raises(ScenarioError):
            write_skeleton(name, tmp_path / "other")
    assert not (tmp_path / "other").exists()
