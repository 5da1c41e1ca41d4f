"""Fixtures the test modules share, and plain asserts in tests/helpers.py reported as
pytest reports a test's own."""

from __future__ import annotations

import pytest

pytest.register_assert_rewrite("tests.helpers")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A testbed cache of the test's own (calibrations, plugins' prepared data), not the
    user's."""
    path = tmp_path / "cache"
    monkeypatch.setenv("DEEPCOD_TESTBED_CACHE", str(path))
    return path


@pytest.fixture(scope="module")
def fashion():
    """fashion_cnn, its trained model and its test set (a module's tests share them)."""
    from tests.helpers import loaded  # imported once its asserts are set to be rewritten

    return loaded("fashion_cnn")
