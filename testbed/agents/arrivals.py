"""When a device agent's measured requests start: the open-loop (Poisson) schedule of each
offloader, and the start barrier at which several devices wait for each other so that
their requests compete for the link at once."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

BARRIER_POLL_S = 0.01


def poisson_offsets_ms(
    rate_hz: float, count: int, seed: int, offloader: int, device: int = 0
) -> np.ndarray:
    """Intended start times of one offloader's measured requests, in ms after the
    first: exponential gaps of mean 1000/rate_hz. Seeded by the scenario's seed, the
    offloader's index and the device's, so each device's arrivals are independent of
    the others' (N devices together make a Poisson process of N * rate_hz)."""
    rng = np.random.default_rng([seed, offloader, device])
    gaps = rng.exponential(1000.0 / rate_hz, max(count - 1, 0))
    return np.concatenate([[0.0], np.cumsum(gaps)])[:count]


def wait_barrier(folder: str | Path, name: str, index: int, count: int, timeout_s: float) -> None:
    """Start barrier of `count` devices: mark this device's arrival as `folder/name.index`,
    then wait until every device's file exists."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.{index}").touch()
    deadline = time.monotonic() + timeout_s
    while True:
        missing = [i for i in range(count) if not (folder / f"{name}.{i}").exists()]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"start barrier {folder}/{name}.*: device(s) {missing} of {count} did not "
                f"arrive within {timeout_s:.0f} s"
            )
        time.sleep(BARRIER_POLL_S)
