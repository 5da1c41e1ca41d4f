"""Huffman kernels: optimal length-limited lengths, canonical codes, exact payloads."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import huffman
from kernels.reference import (
    canonical_codes_ref,
    code_lengths_ref,
    histogram_ref,
    huffman_decode_ref,
    huffman_encode_ref,
    huffman_lengths_ref,
)


def kraft(lengths):
    used = lengths[lengths > 0].astype(np.float64)
    return float(np.sum(2.0**-used))


@st.composite
def histograms(draw, max_alphabet=48):
    """Histograms with zeros, ties, and geometric/Zipf skews that force long codes."""
    a = draw(st.integers(1, max_alphabet))
    kind = draw(st.sampled_from(["uniform", "geometric", "zipf", "fibonacci", "sparse"]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        c = rng.integers(0, 20, a)
    elif kind == "geometric":
        c = np.round(1e6 * rng.uniform(0.3, 0.9) ** np.arange(a)).astype(np.int64)
    elif kind == "zipf":
        c = np.round(1e5 / np.arange(1, a + 1) ** rng.uniform(0.5, 2.5)).astype(np.int64)
    elif kind == "fibonacci":  # the worst case for code length
        c = np.ones(a, np.int64)
        for i in range(2, a):
            c[i] = min(c[i - 1] + c[i - 2], 10**12)
    else:
        c = rng.integers(0, 1000, a) * (rng.random(a) < 0.3)
    return rng.permutation(c).astype(np.int64)


@settings(max_examples=150, deadline=None)
@given(histograms(), st.integers(1, 16))
def test_code_lengths_match_package_merge_reference(counts, limit):
    used = int(np.count_nonzero(counts))
    if used > 1 << limit:
        with pytest.raises(ValueError):
            huffman.code_lengths(counts, limit)
        return
    lengths = huffman.code_lengths(counts, limit)
    np.testing.assert_array_equal(lengths, code_lengths_ref(counts, limit))
    assert np.array_equal(lengths > 0, counts > 0)
    if used >= 2:
        assert lengths.max() <= limit
        assert kraft(lengths) == 1.0  # complete: no code space wasted
    # Optimal: no worse than unlimited Huffman whenever the limit does not bind.
    free = huffman_lengths_ref(counts)
    if free.max(initial=0) <= limit:
        assert np.dot(counts, lengths.astype(np.int64)) == np.dot(counts, free)


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 65536), st.sampled_from(["flat", "zipf", "geometric"]), st.integers(0, 99))
def test_code_lengths_large_alphabets(a, kind, seed):
    rng = np.random.default_rng(seed)
    if kind == "flat":
        c = rng.integers(1, 5, a)
    elif kind == "zipf":
        c = np.maximum(1, np.round(1e7 / np.arange(1, a + 1) ** 1.2)).astype(np.int64)
    else:
        c = np.maximum(1, np.round(1e9 * 0.8 ** np.arange(a))).astype(np.int64)
    lengths = huffman.code_lengths(c)
    assert lengths.max() <= huffman.default_limit(a) <= huffman.MAX_LIMIT
    assert kraft(lengths) == 1.0
    if a == 65536:
        assert np.all(lengths == 16)
    free = huffman_lengths_ref(c) if a <= 4096 else None
    if free is not None and free.max() <= huffman.MAX_LIMIT:
        l16 = huffman.code_lengths(c, huffman.MAX_LIMIT).astype(np.int64)
        assert np.dot(c, l16) == np.dot(c, free)


def test_code_lengths_edge_cases():
    assert huffman.code_lengths(np.zeros(5, np.int64)).tolist() == [0] * 5
    assert huffman.code_lengths(np.array([0, 7, 0])).tolist() == [0, 1, 0]
    assert huffman.code_lengths(np.array([3, 0, 3])).tolist() == [1, 0, 1]
    with pytest.raises(ValueError):
        huffman.code_lengths(np.array([1, -1]))
    with pytest.raises(ValueError):
        huffman.code_lengths(np.ones(5), limit=2)


def test_codes_are_canonical_and_deterministic():
    lengths = np.array([3, 3, 3, 3, 3, 2, 4, 4], np.uint8)
    codes = huffman.canonical_codes(lengths)
    np.testing.assert_array_equal(codes, canonical_codes_ref(lengths))
    # deflate's RFC 1951 example
    assert codes.tolist() == [0b010, 0b011, 0b100, 0b101, 0b110, 0b00, 0b1110, 0b1111]


@st.composite
def symbol_arrays(draw):
    wide = draw(st.booleans())
    a = draw(st.sampled_from([1, 2, 3, 8, 256] + ([300, 4096, 65536] if wide else [])))
    n = draw(st.integers(0, 3000))
    kind = draw(st.sampled_from(["uniform", "geometric", "zipf"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "uniform":
        s = rng.integers(0, a, n)
    elif kind == "geometric":
        s = np.minimum(rng.geometric(rng.uniform(0.05, 0.9), n) - 1, a - 1)
    else:
        s = np.minimum(rng.zipf(rng.uniform(1.1, 3.0), n) - 1, a - 1)
    return s.astype(np.uint16 if wide else np.uint8)


@settings(max_examples=120, deadline=None)
@given(symbol_arrays())
def test_payload_matches_reference_and_round_trips(symbols):
    alphabet = 256 if symbols.dtype == np.uint8 else 65536
    counts = huffman.histogram(symbols)
    np.testing.assert_array_equal(counts, histogram_ref(symbols, alphabet))
    lengths = huffman.code_lengths(counts)
    payload, nbits = huffman.encode(symbols, lengths)
    ref_payload, ref_bits = huffman_encode_ref(symbols, lengths)
    assert nbits == ref_bits == huffman.encoded_bits(counts, lengths)
    np.testing.assert_array_equal(payload, ref_payload)
    out = huffman.decode(payload, lengths, symbols.size)
    assert out.dtype == symbols.dtype
    np.testing.assert_array_equal(out, symbols)
    if symbols.size <= 600:
        np.testing.assert_array_equal(huffman_decode_ref(payload, lengths, symbols.size), symbols)


def test_long_codes_take_the_slow_path():
    # Fibonacci counts give codes up to the limit, past the 11-bit primary table.
    counts = np.ones(40, np.int64)
    for i in range(2, 40):
        counts[i] = counts[i - 1] + counts[i - 2]
    rng = np.random.default_rng(0)
    for limit in (14, 15, 16):
        lengths = huffman.code_lengths(counts, limit)
        assert lengths.max() == limit
        for n in range(1, 130, 7):  # every tail length of the 3- and 4-symbol groups
            symbols = rng.permutation(np.repeat(np.arange(40), 4))[:n].astype(np.uint8)
            payload, nbits = huffman.encode(symbols, lengths)
            ref_payload, ref_bits = huffman_encode_ref(symbols, lengths)
            assert nbits == ref_bits
            np.testing.assert_array_equal(payload, ref_payload)
            np.testing.assert_array_equal(huffman.decode(payload, lengths, n), symbols)


def test_decode_rejects_bad_input():
    symbols = np.array([0, 1, 2, 2, 2, 1], np.uint8)
    lengths = huffman.code_lengths(huffman.histogram(symbols))
    payload, _ = huffman.encode(symbols, lengths)
    with pytest.raises(ValueError):
        huffman.decode(payload, lengths, symbols.size + 20)  # runs past the payload
    with pytest.raises(ValueError):
        huffman.decode(payload, lengths, 1)  # leaves bytes unused
    with pytest.raises(ValueError):
        huffman.decode(payload, np.array([1, 1, 1], np.uint8), 3)  # oversubscribed
    one = np.zeros(256, np.uint8)
    one[5] = 1
    with pytest.raises(ValueError, match="not a code"):
        huffman.decode(b"\x80", one, 1)  # '1' is unused in a one-symbol code
    with pytest.raises(ValueError):
        huffman.encode(np.array([3], np.uint8), np.array([1, 1, 0, 0], np.uint8))
    with pytest.raises(TypeError):
        huffman.histogram(np.array([1], np.int32))
