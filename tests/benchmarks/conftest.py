"""Shared inputs for the kernel benchmarks, built once per session."""

import numpy as np
import pytest


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "perf: timing-ratio assertion (deselect with -m 'not perf' on noisy machines)"
    )


N_SYMBOLS = 1_000_000
N_FLOATS = 4_000_000


@pytest.fixture(scope="session")
def skewed_u8():
    """1M uint8 symbols with a discrete-Laplace histogram (scale 6, ~5 bits of entropy),
    the shape quantized activations have."""
    rng = np.random.default_rng(1234)
    return np.clip(np.round(rng.laplace(0, 6, N_SYMBOLS)) + 128, 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def activations():
    """4M float32 values (16 MB), as an NCHW feature map of shape (4, 64, 125, 125)."""
    rng = np.random.default_rng(99)
    return rng.standard_normal((4, 64, 125, 125), dtype=np.float32)
