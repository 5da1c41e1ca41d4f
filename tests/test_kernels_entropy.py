"""The offloaders' blob format: exact round trips, the documented layout, compact headers,
and rejection of every truncated, corrupted or hostile blob with CorruptBlob."""

import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import bitpack, entropy, huffman
from kernels.entropy import CorruptBlob
from kernels.reference import huffman_encode_ref

DTYPES = [np.uint8, np.int8, np.uint16, np.int16]


def make_array(dtype, shape, alphabet, kind, seed):
    """Symbols of one of several histogram shapes, as `dtype` (signed types centred on 0)."""
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape, dtype=np.int64))
    full = 1 << (8 * np.dtype(dtype).itemsize)
    alphabet = min(alphabet, full)
    if kind == "uniform":
        u = rng.integers(0, alphabet, n)
    elif kind == "geometric":
        u = np.minimum(rng.geometric(rng.uniform(0.02, 0.9), n) - 1, alphabet - 1)
    elif kind == "zipf":
        u = np.minimum(rng.zipf(rng.uniform(1.05, 3.0), n) - 1, alphabet - 1)
    elif kind == "distinct":
        u = rng.permutation(full)[: min(n, full)]
        u = np.resize(u, n)
    else:  # one symbol, anywhere in the alphabet
        u = np.full(n, rng.integers(0, full))
    u = (u + rng.integers(0, full - alphabet + 1)) % full if kind != "distinct" else u
    info = np.iinfo(dtype)
    return (u + info.min).astype(dtype).reshape(shape)


@st.composite
def arrays_to_code(draw):
    dtype = draw(st.sampled_from(DTYPES))
    shape = tuple(draw(st.lists(st.integers(0, 9), min_size=0, max_size=4)))
    if draw(st.booleans()):  # sometimes a long 1-D array
        shape = (draw(st.integers(0, 5000)),)
    alphabet = draw(st.sampled_from([1, 2, 3, 7, 8, 255, 256, 257, 1000, 65535, 65536]))
    kind = draw(st.sampled_from(["uniform", "geometric", "zipf", "distinct", "one"]))
    return make_array(dtype, shape, alphabet, kind, draw(st.integers(0, 2**32 - 1)))


def parse(blob):
    """An independent reading of the layout documented in docs/kernels.md."""

    def varint(pos):
        value, shift = 0, 0
        while True:
            b = blob[pos]
            pos += 1
            value |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return value, pos

    assert blob[:2] == b"DC" and blob[2] == 1
    assert struct.unpack("<I", blob[-4:])[0] == zlib.crc32(blob[:-4])
    flags, ndim = blob[3], blob[4]
    pos, shape = 5, []
    for _ in range(ndim):
        d, pos = varint(pos)
        shape.append(d)
    out = {"dtype": flags & 3, "sparse": bool(flags & 4), "shape": tuple(shape)}
    if int(np.prod(shape, dtype=object)) == 0:
        assert pos == len(blob) - 4
        return out
    max_len = blob[pos]
    width = max_len.bit_length()
    lo, pos = varint(pos + 1)
    count, pos = varint(pos)
    syms = [lo]
    if out["sparse"]:
        for _ in range(count - 1):
            gap, pos = varint(pos)
            syms.append(syms[-1] + gap)
    else:
        syms = list(range(lo, lo + count))
    nbytes = (count * width + 7) // 8
    values = bitpack.unpack(blob[pos : pos + nbytes], width, count)
    pos += nbytes
    alphabet = 256 if out["dtype"] < 2 else 65536
    lengths = np.zeros(alphabet, np.uint8)
    lengths[syms] = values
    nbits, pos = varint(pos)
    out.update(lengths=lengths, max_len=max_len, nbits=nbits, payload=blob[pos:-4])
    assert len(out["payload"]) == (nbits + 7) // 8
    return out


@settings(max_examples=150, deadline=None)
@given(arrays_to_code())
def test_round_trip_and_layout(a):
    blob = entropy.encode(a)
    back = entropy.decode(blob)
    assert back.dtype == a.dtype and back.shape == a.shape
    np.testing.assert_array_equal(back, a)
    info = parse(entropy.encode(a, coder="huffman"))
    assert info["shape"] == a.shape
    if a.size:
        u = a.reshape(-1).astype(np.int64) - np.iinfo(a.dtype).min
        counts = np.bincount(u, minlength=info["lengths"].size)
        np.testing.assert_array_equal(info["lengths"], huffman.code_lengths(counts))
        payload, nbits = huffman_encode_ref(u, info["lengths"])
        assert nbits == info["nbits"] and payload.tobytes() == info["payload"]


def test_one_symbol_costs_one_bit_each():
    for n in (1, 7, 8, 9, 1000):
        a = np.full(n, -3, np.int16)
        blob = entropy.encode(a, coder="huffman")
        info = parse(blob)
        assert info["nbits"] == n and info["max_len"] == 1
        assert info["payload"] == bytes((n + 7) // 8)
        np.testing.assert_array_equal(entropy.decode(blob), a)


def test_zero_dim_and_empty():
    for a in (
        np.array(7, np.uint8),
        np.array(-7, np.int8),
        np.zeros((0,), np.uint16),
        np.zeros((3, 0, 5), np.int16),
        np.zeros((), np.uint16),
    ):
        back = entropy.decode(entropy.encode(a))
        assert back.shape == a.shape and back.dtype == a.dtype
        np.testing.assert_array_equal(back, a)
    assert len(entropy.encode(np.zeros(0, np.uint8))) == 10


def test_headers_are_small():
    rng = np.random.default_rng(0)
    # DeepCOD-like: 8-centre indices of a (1, 16, 7, 7) feature map.
    a = rng.integers(0, 8, (1, 16, 7, 7)).astype(np.uint8)
    blob = entropy.encode(a, coder="huffman")
    info = parse(blob)
    assert len(blob) - len(info["payload"]) <= 22
    # A few distant int16 values: the sparse form must not spend a table on the gaps.
    b = rng.choice(np.array([-30000, -5, 0, 7, 29000], np.int16), 300)
    info = parse(entropy.encode(b, coder="huffman"))
    assert info["sparse"] and len(entropy.encode(b, coder="huffman")) - len(info["payload"]) <= 28


def test_same_input_same_bytes():
    rng = np.random.default_rng(1)
    a = rng.integers(-300, 300, (6, 40)).astype(np.int16)
    blob = entropy.encode(a)
    assert entropy.encode(a.copy()) == blob
    assert entropy.encode(np.asfortranarray(a)) == blob
    assert entropy.encode(a.astype(">i2")) == blob
    strided = np.zeros((6, 80), np.int16)
    strided[:, ::2] = a
    assert entropy.encode(strided[:, ::2]) == blob
    assert entropy.decode(bytearray(blob)).tolist() == a.tolist()


def test_size_close_to_entropy():
    rng = np.random.default_rng(2)
    n = 200_000
    a = np.clip(np.round(rng.laplace(0, 6, n)) + 128, 0, 255).astype(np.uint8)
    h = entropy.empirical_entropy(a)
    info = parse(entropy.encode(a, coder="huffman"))
    assert info["nbits"] <= 1.01 * h * n
    # Gallager's bound holds for every histogram: H + p_max + 0.086 bits per symbol.
    for seed in range(5):
        s = make_array(np.uint16, (20000,), 4000, ["geometric", "zipf"][seed % 2], seed)
        p_max = np.unique(s, return_counts=True)[1].max() / s.size
        info = parse(entropy.encode(s, coder="huffman"))
        assert info["nbits"] / s.size <= entropy.empirical_entropy(s) + p_max + 0.086


def test_unsupported_input():
    for bad in (np.zeros(3, np.int32), np.zeros(3, np.float32), np.zeros(3, bool)):
        with pytest.raises(TypeError):
            entropy.encode(bad)
    with pytest.raises(TypeError):
        entropy.decode("not bytes")


# --------------------------------------------------------------------------- corruption


def samples():
    rng = np.random.default_rng(3)
    return [
        np.zeros(0, np.uint8),
        np.array(5, np.int8),
        np.full(50, 9, np.uint8),
        rng.integers(0, 8, (2, 8, 5)).astype(np.uint8),
        np.clip(rng.normal(0, 30, 400), -128, 127).astype(np.int8),
        rng.choice(np.array([-30000, -5, 0, 7, 29000], np.int16), 120),
        rng.integers(0, 65536, 300).astype(np.uint16),
    ]


def decodes_or_rejects(blob):
    """Decoding may only succeed or raise CorruptBlob, and never allocate past the blob."""
    try:
        out = entropy.decode(blob)
    except CorruptBlob:
        return False
    assert out.size <= entropy.ANS_SYMBOLS_PER_BYTE * len(blob)
    return True


def test_truncations_flips_and_garbage_are_rejected():
    rng = np.random.default_rng(4)
    for a in samples():
        blob = entropy.encode(a)
        for cut in range(len(blob)):
            with pytest.raises(CorruptBlob):
                entropy.decode(blob[:cut])
        with pytest.raises(CorruptBlob):
            entropy.decode(blob + b"\x00")
        for bit in range(min(8 * len(blob), 800)):
            flipped = bytearray(blob)
            flipped[bit // 8] ^= 1 << (bit % 8)
            with pytest.raises(CorruptBlob):
                entropy.decode(bytes(flipped))
        for _ in range(200):
            bad = bytearray(blob)
            for pos in rng.integers(0, len(bad), rng.integers(1, 4)):
                bad[pos] = rng.integers(0, 256)
            if bytes(bad) != blob:
                with pytest.raises(CorruptBlob):
                    entropy.decode(bytes(bad))
    for _ in range(300):
        assert not decodes_or_rejects(
            rng.integers(0, 256, rng.integers(0, 64)).astype(np.uint8).tobytes()
        )


def seal(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def test_hostile_blobs_with_valid_checksums():
    """Mutate the body and fix the CRC: every outcome is a clean decode or CorruptBlob."""
    rng = np.random.default_rng(5)
    accepted = 0
    for a in samples():
        body = entropy.encode(a)[:-4]
        for _ in range(400):
            bad = bytearray(body)
            where = rng.integers(0, min(len(bad), 24), rng.integers(1, 3))  # mostly header
            for pos in where:
                bad[pos] = rng.integers(0, 256) if rng.random() < 0.7 else bad[pos] ^ 1
            cut = len(bad) if rng.random() < 0.8 else rng.integers(0, len(bad) + 1)
            accepted += decodes_or_rejects(seal(bytes(bad[:cut])))
    assert accepted < 2000  # most mutations must be caught by the structure checks


def header(flags=0, shape=(4,)):
    out = b"DC\x01" + bytes([flags, len(shape)])
    for d in shape:
        out += entropy._varint(d)
    return out


@pytest.mark.parametrize(
    "body",
    [
        b"XX\x01\x00\x00",  # magic
        b"DC\x02\x00\x00",  # version
        header(flags=0x10, shape=()),  # reserved flag bit
        b"DC\x01\x00\x41" + b"\x01" * 65,  # 65 dimensions
        header(shape=())[:4] + b"\x01" + b"\xff" * 10,  # dimension varint too long
        header(shape=(10**12,)) + b"\x01\x00\x02\xc0" + b"\x10" + b"\x00\x00",  # 10^12 symbols
        header(shape=(4,)) + b"\x00\x00\x02\x10\x08\x00",  # max length 0
        header(shape=(4,)) + b"\x11\x00\x02\xff\xff\x08\x00",  # max length 17
        header(shape=(4,)) + b"\x01\xff\x01\x02\xc0\x04\x00",  # lo 255 + 2 symbols > 256
        header(shape=(4,)) + b"\x01\x00\x00\x04\x00",  # empty symbol range
        header(shape=(4,)) + b"\x01\x00\x03\xe0\x04\x00",  # three 1-bit codes: oversubscribed
        header(shape=(4,)) + b"\x02\x00\x02\x60\x04\x00",  # lengths 1, 2: incomplete
        header(shape=(4,)) + b"\x02\x00\x01\x80\x08\x00",  # one symbol of length 2
        header(shape=(4,)) + b"\x02\x00\x02\xb0\x04\x00",  # a length above the maximum
        header(shape=(4,)) + b"\x01\x00\x02\xc0\x05\x00",  # 5 bits for 4 one-bit symbols
        header(shape=(4,)) + b"\x01\x00\x02\xc0\x04\x00\x00",  # payload longer than stated
        header(shape=(4,)) + b"\x01\x00\x02\xc0\x04\x01",  # nonzero padding
        header(shape=(4,)) + b"\x01\x00\x01\x80\x04\x10",  # one-symbol code, '1' bit
        header(flags=0x04, shape=(4,)) + b"\x01\x00\x02\x00\xc0\x04\x00",  # sparse gap 0
        header(flags=0x04, shape=(4,)) + b"\x01\xfe\x01\x02\x05\xc0\x04\x00",  # sparse past 255
        header(flags=0x04, shape=(4,)) + b"\x01\x00\x02\x01\x80\x04\x00",  # sparse length 0
        header(shape=(0,)) + b"\x00",  # empty array with trailing bytes
        header(shape=(2,)) + b"\x02\x00\x03\x68\x03\x00",  # decodes to 2 of 3 stated bits
    ],
)
def test_specific_hostile_blobs(body):
    with pytest.raises(CorruptBlob):
        entropy.decode(seal(body))


def test_hostile_shapes_do_not_crash():
    for shape in [(0, 2**62), (0, 2**63 - 1, 2**63 - 1), (2**40, 0)]:
        decodes_or_rejects(seal(header(shape=shape)))
    with pytest.raises(CorruptBlob):  # a 10-byte dimension (2**63 or more)
        entropy.decode(seal(header(shape=(0,))[:5] + b"\x80" * 9 + b"\x01"))


def test_valid_handmade_blob():
    # Four symbols 0,1,1,1 as lengths (1,1) and bits 0111 -> one payload byte 0x70.
    blob = seal(header(shape=(4,)) + b"\x01\x00\x02\xc0\x04\x70")
    np.testing.assert_array_equal(entropy.decode(blob), [0, 1, 1, 1])


# --------------------------------------------------------------------------- expectations


@settings(max_examples=150, deadline=None)
@given(arrays_to_code())
def test_max_blob_size_bounds_every_blob(a):
    blob = entropy.encode(a)
    assert len(blob) <= entropy.max_blob_size(a.shape, a.dtype)
    np.testing.assert_array_equal(entropy.decode(blob, shape=a.shape, dtype=a.dtype), a)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("levels", [1, 2, 3, 8, 200, 256, 257, 5000, 65536])
def test_max_blob_size_is_tight_for_uniform_symbols(dtype, levels):
    """Uniform symbols over `levels` consecutive values are the worst case the bound
    assumes: their blob is within a few percent of it (and never above it)."""
    full = 1 << (8 * np.dtype(dtype).itemsize)
    if levels > full:
        return
    rng = np.random.default_rng(levels)
    lo = np.iinfo(dtype).min + rng.integers(0, full - levels + 1)
    for shape in [(1,), (5, 3), (1, 16, 7, 7), (20_000,)]:
        a = (lo + rng.integers(0, levels, shape)).astype(dtype)
        if levels > 1 and a.size > 4 * levels:  # every value present: the widest table
            a.reshape(-1)[:levels] = lo + np.arange(levels)
        size = len(entropy.encode(a))
        bound = entropy.max_blob_size(shape, dtype, levels)
        assert size <= bound
        if a.size >= 4 * levels and levels & (levels - 1) == 0:  # a power of 2: tight
            assert bound - size <= 0.02 * bound + 8, (shape, size, bound)


def test_max_blob_size_of_empty_and_bad_arguments():
    assert entropy.max_blob_size((0,), np.uint8) == len(entropy.encode(np.zeros(0, np.uint8)))
    assert entropy.max_blob_size((), np.int16) >= len(entropy.encode(np.array(-1, np.int16)))
    with pytest.raises(TypeError):
        entropy.max_blob_size((3,), np.float32)
    with pytest.raises(ValueError):
        entropy.max_blob_size((3,), np.uint8, levels=257)
    with pytest.raises(ValueError):
        entropy.max_blob_size((-1,), np.uint8)


@pytest.mark.parametrize(
    "expect, message",
    [
        ({"shape": (4, 4)}, "shape"),
        ({"dtype": np.int8}, "int8"),
        ({"max_symbols": 15}, "at most 15"),
        ({"shape": (16,), "dtype": np.uint16}, "uint16"),
    ],
)
def test_decode_refuses_what_the_caller_does_not_expect(expect, message):
    a = np.arange(16, dtype=np.uint8) % 3
    blob = entropy.encode(a)
    with pytest.raises(CorruptBlob, match=message):
        entropy.decode(blob, **expect)
    for ok in ({"shape": (16,)}, {"dtype": np.uint8}, {"max_symbols": 16}, {}):
        np.testing.assert_array_equal(entropy.decode(blob, **ok), a)
    np.testing.assert_array_equal(entropy.decode(blob, shape=[16], dtype=">u1"), a)


def test_a_large_legal_blob_is_refused_before_any_work():
    """The audit's blob: 64M one-bit symbols in 8 MB, sent where 784 were expected. It is
    refused by its length (shape and dtype given) or its header (either alone), before
    the 64 MB output is allocated or a symbol decoded: fast and with little memory."""
    import time
    import tracemalloc

    blob = entropy.encode(np.zeros(1 << 26, np.uint8), coder="huffman")
    assert len(blob) > 8_000_000
    for expect in (
        {"shape": (1, 16, 7, 7), "dtype": np.uint8},
        {"shape": (1, 16, 7, 7)},
        {"max_symbols": 784},
    ):
        tracemalloc.start()
        start = time.perf_counter()
        with pytest.raises(CorruptBlob):
            entropy.decode(blob, **expect)
        took = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert took < 0.05 and peak < 1 << 20, (expect, took, peak)
