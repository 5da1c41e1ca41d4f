"""Where a trained bottleneck lives, and the command that writes it: what the offloader
needs to find it without importing the training code."""

from __future__ import annotations

from pathlib import Path

__all__ = ["artefact_key", "artefact_path", "command"]


def artefact_key(split: int, channels: int, bits: int, stride: int) -> str:
    """`bottlenet-s2-c4-b4-x2`: split, code channels, bits, encoder stride (the suffix is
    left out for stride 1)."""
    return f"bottlenet-s{split}-c{channels}-b{bits}" + (f"-x{stride}" if stride > 1 else "")


def artefact_path(plugin, split: int, channels: int, bits: int, stride: int) -> Path:
    """`plugin.artefacts[key]` where set (tests redirect it), else beside the plugin's code."""
    return plugin.artefact_file(artefact_key(split, channels, bits, stride))


def command(plugin_name: str, split: int, channels: int, bits: int, stride: int) -> str:
    """The command that writes the artefact the offloader looks for."""
    return (
        f"python -m testbed.offloaders.bottlenet.train --plugin {plugin_name} --split {split} "
        f"--channels {channels} --bits {bits} --stride {stride}"
    )
