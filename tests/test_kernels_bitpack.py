"""Bit packing: kernels against the numpy reference, round trips, and input checks."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import bitpack
from kernels.reference import pack_ref, unpack_ref


@st.composite
def packable(draw):
    k = draw(st.integers(1, 16))
    n = draw(st.integers(0, 300))
    seed = draw(st.integers(0, 2**32 - 1))
    values = np.random.default_rng(seed).integers(0, 1 << k, n)
    return values.astype(np.uint8 if k <= 8 else np.uint16), k


@settings(max_examples=150, deadline=None)
@given(packable())
def test_pack_matches_reference_and_round_trips(case):
    values, k = case
    packed = bitpack.pack(values, k)
    assert packed.size == bitpack.packed_size(values.size, k)
    np.testing.assert_array_equal(packed, pack_ref(values, k))
    back = bitpack.unpack(packed, k, values.size)
    assert back.dtype == (np.uint8 if k <= 8 else np.uint16)
    np.testing.assert_array_equal(back, values)
    np.testing.assert_array_equal(back, unpack_ref(packed.tobytes(), k, values.size))


def test_pack_is_msb_first():
    assert bitpack.pack(np.array([1, 0, 1], np.uint8), 1).tolist() == [0b10100000]
    assert bitpack.pack(np.array([0xABC], np.uint16), 12).tolist() == [0xAB, 0xC0]


def test_wide_dtype_values_and_bytes_input():
    values = np.array([3, 1, 2], np.int16)
    packed = bitpack.pack(values, 2)
    np.testing.assert_array_equal(bitpack.unpack(packed.tobytes(), 2, 3), values)


@pytest.mark.parametrize("k", [0, 17])
def test_bad_width(k):
    with pytest.raises(ValueError):
        bitpack.pack(np.zeros(3, np.uint8), k)


def test_value_too_wide():
    with pytest.raises(ValueError, match="does not fit"):
        bitpack.pack(np.array([1, 8], np.uint8), 3)
    with pytest.raises(ValueError):
        bitpack.pack(np.array([-1], np.int8), 3)
    with pytest.raises(TypeError):
        bitpack.pack(np.array([1.0]), 3)


def test_unpack_needs_enough_bytes():
    with pytest.raises(ValueError):
        bitpack.unpack(np.zeros(2, np.uint8), 9, 2)
    with pytest.raises(ValueError):
        bitpack.unpack(np.zeros(2, np.uint8), 4, -1)
