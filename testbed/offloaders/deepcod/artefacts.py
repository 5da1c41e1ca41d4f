"""Where a trained DeepCOD lives, and the command that writes it: what the offloader
needs to find its networks without importing the training code."""

from __future__ import annotations

from pathlib import Path

__all__ = ["artefact_key", "artefact_path", "command"]


def artefact_key(ratio: float, split: int = 0) -> str:
    """`deepcod-r0.1` on the input, `deepcod-s2-r0.1` after split point 2."""
    return f"deepcod-s{split}-r{ratio:g}" if split else f"deepcod-r{ratio:g}"


def artefact_path(plugin, ratio: float, split: int = 0) -> Path:
    """Beside the plugin's code (its package folder), named by the ratio and split."""
    return plugin.artefact_file(artefact_key(ratio, split))


def command(plugin_name: str, ratio: float, split: int = 0) -> str:
    """The command that writes the artefact the offloader looks for."""
    where = f" --split {split}" if split else ""
    return f"python -m testbed.offloaders.deepcod.train --plugin {plugin_name} --ratio {ratio:g}{where}"
