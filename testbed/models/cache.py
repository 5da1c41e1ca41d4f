"""Where plugins keep what they prepare (decoded data sets, synthesized audio, crops):
outside the repository, reused by later runs.

`$DEEPCOD_TESTBED_CACHE` if set, else `$XDG_CACHE_HOME/deepcod-testbed`, else
`~/.cache/deepcod-testbed`. Each plugin gets its own subfolder.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "DEEPCOD_TESTBED_CACHE"


def cache_dir(*parts: str) -> Path:
    if os.environ.get(ENV):
        root = Path(os.environ[ENV])
    else:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        root = Path(base) / "deepcod-testbed"
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
