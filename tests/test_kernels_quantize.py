"""Quantization kernels: bit-exact against the numpy references, plus their invariants."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from kernels import quantize
from kernels.reference import (
    centre_values_ref,
    dequantize_uniform_ref,
    nearest_centre_ref,
    quantize_uniform_ref,
)

floats32 = st.floats(width=32, allow_nan=True, allow_infinity=True)
finite32 = st.floats(-1e6, 1e6, width=32)
shapes = array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=7)


@settings(max_examples=120, deadline=None)
@given(
    arrays(np.float32, shapes, elements=floats32),
    st.integers(1, 16),
    st.floats(2**-20, 1e3, width=32),
    finite32,
)
def test_uniform_per_tensor_matches_reference(x, bits, scale, offset):
    q = quantize.quantize_uniform(x, bits, scale, offset)
    ref = quantize_uniform_ref(x, bits, scale, offset)
    assert q.dtype == ref.dtype and q.shape == x.shape
    np.testing.assert_array_equal(q, ref)
    back = quantize.dequantize_uniform(q, scale, offset)
    np.testing.assert_array_equal(back, dequantize_uniform_ref(q, scale, offset))


@settings(max_examples=80, deadline=None)
@given(arrays(np.float32, shapes, elements=finite32), st.integers(1, 16))
def test_uniform_round_trip_error_is_half_a_step(x, bits):
    scale, offset = quantize.uniform_params(x, bits)
    back = quantize.dequantize_uniform(
        quantize.quantize_uniform(x, bits, scale, offset), scale, offset
    )
    # Half a step, plus float32 rounding of the affine maps.
    tol = 0.5 * float(scale) * (1 + 1e-3) + 1e-6 * (1 + np.abs(x).max(initial=0))
    assert np.all(np.abs(back.astype(np.float64) - x) <= tol)


@st.composite
def channel_case(draw):
    x = draw(
        arrays(np.float32, array_shapes(min_dims=1, max_dims=4, max_side=6), elements=floats32)
    )
    axis = draw(st.integers(-x.ndim, x.ndim - 1))
    c = x.shape[axis]
    scale = draw(arrays(np.float32, c, elements=st.floats(2**-13, 1e3, width=32)))
    offset = draw(arrays(np.float32, c, elements=finite32))
    return x, axis, scale, offset


@settings(max_examples=100, deadline=None)
@given(channel_case(), st.integers(1, 16))
def test_uniform_per_channel_matches_reference(case, bits):
    x, axis, scale, offset = case
    q = quantize.quantize_uniform(x, bits, scale, offset, axis=axis)
    np.testing.assert_array_equal(q, quantize_uniform_ref(x, bits, scale, offset, axis=axis))
    back = quantize.dequantize_uniform(q, scale, offset, axis=axis)
    np.testing.assert_array_equal(back, dequantize_uniform_ref(q, scale, offset, axis=axis))


def test_per_channel_params_and_channels_last():
    rng = np.random.default_rng(0)
    x = (
        rng.normal(size=(2, 5, 3, 4)).astype(np.float32)
        * np.arange(1, 6, dtype=np.float32)[:, None, None]
    )
    for axis in (1, -1):
        scale, offset = quantize.uniform_params(x, 8, axis=axis)
        assert scale.shape == (x.shape[axis],)
        q = quantize.quantize_uniform(x, 8, scale, offset, axis=axis)
        np.testing.assert_array_equal(q, quantize_uniform_ref(x, 8, scale, offset, axis=axis))
        assert q.max() == 255 and q.min() == 0


def test_uniform_special_values():
    x = np.array([np.nan, -np.inf, np.inf, -1.0, 0.0, 0.49, 0.5, 1e30], np.float32)
    q = quantize.quantize_uniform(x, 4, 1.0, 0.0)
    assert q.tolist() == [0, 0, 15, 0, 0, 0, 1, 15]
    scale, offset = quantize.uniform_params(np.full(5, 3.0, np.float32), 8)
    assert scale == 1 and offset == 3  # constant input: exact after dequantization
    assert quantize.quantize_uniform(x, 12, 1.0, 0.0).dtype == np.uint16
    nan = np.full((2, 3), np.nan, np.float32)
    assert quantize.uniform_params(nan, 8) == (1, 0)
    scale, offset = quantize.uniform_params(np.zeros((3, 0, 2), np.float32), 8, axis=0)
    assert scale.tolist() == [1, 1, 1] and offset.tolist() == [0, 0, 0]
    scale, _ = quantize.uniform_params(np.array([-3e38, 3e38], np.float32), 8)
    assert np.isfinite(scale) and scale > 2e36  # the float64 range does not overflow


def test_uniform_argument_checks():
    x = np.zeros((2, 3), np.float32)
    for bad_bits in (0, 17):
        with pytest.raises(ValueError):
            quantize.quantize_uniform(x, bad_bits, 1.0, 0.0)
    for bad_scale in (0.0, -1.0, np.nan, np.inf):
        with pytest.raises(ValueError):
            quantize.quantize_uniform(x, 8, bad_scale, 0.0)
    with pytest.raises(ValueError):
        quantize.quantize_uniform(x, 8, 1.0, np.nan)
    with pytest.raises(ValueError):
        quantize.quantize_uniform(x, 8, np.ones(2), np.zeros(2), axis=1)
    with pytest.raises(ValueError):
        quantize.quantize_uniform(x, 8, np.ones(3), np.zeros(3))
    with pytest.raises(TypeError):
        quantize.dequantize_uniform(np.zeros(3, np.int32), 1.0, 0.0)


# --------------------------------------------------------------------------- codebook

centres_st = arrays(np.float32, st.integers(1, 40), elements=st.floats(-1e4, 1e4, width=32))


@settings(max_examples=150, deadline=None)
@given(centres_st, arrays(np.float32, shapes, elements=floats32), st.booleans())
def test_nearest_centre_matches_reference(centres, x, sort):
    if sort:
        centres = np.sort(centres)
    cb = quantize.Codebook(centres)
    # Values on the decision boundaries and on the centres are the interesting ties.
    edges = np.concatenate([cb.mids, cb.mids, centres]).astype(np.float32)
    probe = np.concatenate([x.reshape(-1), edges, np.nextafter(edges, np.float32(np.inf))])
    for data in (x, probe):
        idx = quantize.nearest_centre(data, centres)
        assert idx.dtype == np.uint8 and idx.shape == data.shape
        np.testing.assert_array_equal(idx, nearest_centre_ref(data, centres))
        np.testing.assert_array_equal(quantize.nearest_centre(data, cb), idx)
        np.testing.assert_array_equal(
            quantize.centre_values(idx, centres), centre_values_ref(idx, centres)
        )


@settings(max_examples=60, deadline=None)
@given(centres_st, arrays(np.float32, st.integers(0, 200), elements=st.floats(-2e4, 2e4, width=32)))
def test_nearest_centre_is_nearest(centres, x):
    idx = quantize.nearest_centre(x, centres)
    d = np.abs(x.astype(np.float64)[:, None] - centres.astype(np.float64)[None, :])
    chosen = d[np.arange(x.size), idx]
    assert np.all(chosen <= d.min(axis=1) + 1e-9 * (1 + np.abs(x)))
    first = np.array([np.flatnonzero(centres == c)[0] for c in centres[idx]], dtype=np.int64)
    np.testing.assert_array_equal(first, idx)  # duplicates resolve to the first index


def test_deepcod_codebook_example():
    centres = np.array([0.9, -0.5, 0.1, -1.2, 0.4, 1.5, -0.1, 2.2], np.float32)  # unsorted
    x = np.random.default_rng(0).normal(size=(1, 8, 4, 4)).astype(np.float32)
    idx = quantize.nearest_centre(x, centres)
    assert idx.shape == x.shape and idx.max() < 8
    back = quantize.centre_values(idx, centres)
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, centres[idx])
    assert quantize.nearest_centre(np.array([np.nan], np.float32), centres)[0] == 3  # lowest


def test_codebook_checks():
    with pytest.raises(ValueError):
        quantize.Codebook(np.array([], np.float32))
    with pytest.raises(ValueError):
        quantize.Codebook(np.zeros(257, np.float32))
    with pytest.raises(ValueError):
        quantize.Codebook(np.array([0.0, np.nan], np.float32))
    with pytest.raises(ValueError, match="outside"):
        quantize.centre_values(np.array([0, 3], np.uint8), np.zeros(3, np.float32))
    with pytest.raises(TypeError):
        quantize.centre_values(np.array([0], np.int64), np.zeros(3, np.float32))
    assert quantize.nearest_centre(np.array([5.0, -5.0]), [1.0]).tolist() == [0, 0]
