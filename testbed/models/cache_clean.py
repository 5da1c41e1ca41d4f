"""`run_scenario.py --clean-cache`: remove what uninstalled plugins left in the cache.

Uninstalling a plugin (`pip uninstall`) leaves what it prepared in `cache_dir(NAME)` and
its calibration results in `calibration/NAME-FAMILY-DIGEST.json`
(testbed.offloaders.calibration). A subfolder or calibration file is an orphan when NAME
is no registered plugin; a plugin that caches under another name than its own is not
recognised, and its folder is removed as soon as no plugin of that name is registered.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from testbed.models import cache, plugins

CALIBRATION = "calibration"  # the folder testbed.offloaders.calibration writes into


def calibration_plugin(path: Path) -> str:
    """The plugin a calibration file is of: its name before `-FAMILY-DIGEST`."""
    return path.stem.rsplit("-", 2)[0]


def orphans(root: Path | None = None, registered: list[str] | None = None) -> list[Path]:
    """The cache's entries of plugins that are not registered, in name order."""
    root = cache.cache_dir() if root is None else Path(root)
    names = set(plugins.available() if registered is None else registered)
    found = [p for p in root.iterdir() if p.is_dir() and p.name != CALIBRATION]
    found = [p for p in found if p.name not in names]
    calibration = root / CALIBRATION
    if calibration.is_dir():
        found += [p for p in calibration.glob("*.json") if calibration_plugin(p) not in names]
    return sorted(found)


def remove(paths: list[Path]) -> None:
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
