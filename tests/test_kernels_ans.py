"""rANS kernels and rANS blobs: exact streams against a plain-Python coder, round trips,
size against the empirical entropy, the per-payload choice, and rejection of every
truncated, corrupted or hostile blob with CorruptBlob (never a crash or a hang)."""

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import ans, entropy, huffman
from kernels.entropy import CorruptBlob
from tests.test_kernels_entropy import DTYPES, decodes_or_rejects, make_array, seal

CENTRES = np.array([-1.6, -0.9, -0.45, -0.1, 0.1, 0.45, 0.9, 1.6], np.float32)


# --------------------------------------------------------------------------- reference


def rans_encode_ref(symbols, freqs, precision, k):
    """A plain rANS coder written from the layout in docs/kernels.md: true division, a
    list of words, no tables. Symbol i uses state i % k; the stream is the k final states
    (little-endian, state 0 first) and the words in the order a decoder reads them."""
    m, low = 1 << precision, 1 << 15
    start = np.concatenate(([0], np.cumsum(freqs)[:-1])).tolist()
    freqs = [int(f) for f in freqs]
    xs = [low] * k
    words = []
    for i in range(len(symbols) - 1, -1, -1):
        s, j = int(symbols[i]), i % k
        f, x = freqs[s], xs[j]
        if x >= f << (31 - precision):
            words.append(x & 0xFFFF)
            x >>= 16
        xs[j] = (x // f) * m + x % f + start[s]
    return b"".join(struct.pack("<I", x) for x in xs) + b"".join(
        struct.pack("<H", w) for w in reversed(words)
    )


def rans_decode_ref(payload, freqs, precision, k, n):
    m, low = 1 << precision, 1 << 15
    cum = np.concatenate(([0], np.cumsum(freqs))).tolist()
    xs = list(struct.unpack_from(f"<{k}I", payload))
    p, out = 4 * k, []
    for i in range(n):
        j = i % k
        slot = xs[j] & (m - 1)
        s = int(np.searchsorted(cum, slot, side="right")) - 1
        out.append(s)
        x = freqs[s] * (xs[j] >> precision) + slot - cum[s]
        if x < low:
            (w,) = struct.unpack_from("<H", payload, p)
            x, p = x << 16 | w, p + 2
        xs[j] = x
    assert xs == [low] * k and p == len(payload)
    return out


def model_bits(symbols, m: ans.Model) -> float:
    counts = np.bincount(symbols.reshape(-1), minlength=m.freqs.size)
    return ans.estimated_bits(counts, m)


def blob_parts(blob: bytes, shape) -> dict:
    """Where a rANS blob's body starts, its precision, states and frequency width."""
    assert blob[3] & 0x08
    pos = 5 + sum(len(entropy._varint(d)) for d in shape)
    packed, width = blob[pos], blob[pos + 1]
    return {"body": pos, "precision": packed & 15, "states": 1 << (packed >> 4 & 3), "width": width}


# --------------------------------------------------------------------------- model


def test_reciprocal_division_is_exact():
    """floor(x / f) = (x * m) >> s for every f of a 15-bit model and x < 2**31: all f,
    with the x where rounding could fail (multiples of f and their neighbours, the ends)."""
    f = np.arange(1, (1 << 15) + 1, dtype=np.uint64)
    table = ans._encode_table(f.astype(np.int64), 15)  # one entry per f (not a model)
    rcp, shift = table[1], table[2]
    assert int(rcp.max()) < 1 << 32
    top = np.uint64((1 << 31) - 1)
    rng = np.random.default_rng(0)
    for x in [
        np.zeros_like(f),
        f - np.uint64(1),
        f,
        top - top % f,
        top - top % f - np.uint64(1),
        np.full_like(f, top),
        rng.integers(0, 1 << 31, f.size).astype(np.uint64),
        (np.uint64((1 << 31) - 1) // f) * f - np.uint64(1),
    ]:
        x = np.minimum(x, top)
        np.testing.assert_array_equal((x * rcp) >> shift, x // f)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.integers(0, 10**6), min_size=1, max_size=300).filter(any),
    st.integers(1, 15),
)
def test_quantized_frequencies_are_a_valid_model(counts, precision):
    c = np.array(counts, np.int64)
    used = int(np.count_nonzero(c))
    if used > 1 << precision:
        with pytest.raises(ValueError):
            ans.quantize(c, precision)
        return
    f = ans.quantize(c, precision)
    assert int(f.sum()) == 1 << precision
    assert np.array_equal(f > 0, c > 0)
    assert ans.check_model(f, precision) is None
    assert np.array_equal(ans.quantize(c, precision), f)  # deterministic


def test_quantization_costs_little():
    """At 12 bits, 8 centres lose under 0.1% to the ideal code; the chosen precision
    trades the table against that loss and never does worse than 12 bits would."""
    rng = np.random.default_rng(1)
    for p in (0.2, 0.35, 0.5, 0.7, 0.9):
        s = np.minimum(rng.geometric(p, 100_000) - 1, 7).astype(np.uint8)
        counts = np.bincount(s, minlength=256)
        h = entropy.empirical_entropy(s) * s.size
        assert ans.estimated_bits(counts, ans.model(counts, 12)) <= 1.001 * h
        chosen = ans.model(counts)
        table = lambda m: 8 * int(m.freqs.max()).bit_length()  # noqa: E731
        assert ans.estimated_bits(counts, chosen) + table(chosen) <= (
            ans.estimated_bits(counts, ans.model(counts, 12)) + table(ans.model(counts, 12))
        )


def test_model_edge_cases():
    assert ans.model(np.zeros(256, np.int64)) is None
    assert ans.model(np.ones(65536, np.int64)) is None  # more symbols than 2**15 slots
    one = np.zeros(256, np.int64)
    one[9] = 5
    m = ans.model(one)
    assert m.precision == 1 and m.freqs[9] == 2 and m.freqs.sum() == 2
    with pytest.raises(ValueError):
        ans.quantize(np.array([1, -1]), 4)
    with pytest.raises(ValueError):
        ans.quantize(np.ones(5), 2)
    assert ans.check_model(np.array([3, 1]), 2) is None
    assert ans.check_model(np.array([3, 2]), 2) == "frequencies do not sum to 2**2"
    assert ans.check_model(np.array([5, -1]), 2) == "a frequency outside 0..2**precision"
    assert ans.check_model(np.array([1, 1]), 0) == "precision 0 outside 1..15"


# --------------------------------------------------------------------------- kernels


@st.composite
def coded(draw):
    """(symbols, model, states): any alphabet shape, precision and interleaving."""
    wide = draw(st.booleans())
    a = draw(st.sampled_from([1, 2, 3, 8, 256] + ([300, 4096] if wide else [])))
    n = draw(st.integers(0, 700))
    kind = draw(st.sampled_from(["uniform", "geometric", "zipf"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "uniform":
        s = rng.integers(0, a, n)
    elif kind == "geometric":
        s = np.minimum(rng.geometric(rng.uniform(0.05, 0.99), n) - 1, a - 1)
    else:
        s = np.minimum(rng.zipf(rng.uniform(1.1, 3.0), n) - 1, a - 1)
    s = s.astype(np.uint16 if wide else np.uint8)
    counts = np.bincount(s, minlength=65536 if wide else 256)
    if n == 0:
        counts[0] = 1
    used = int(np.count_nonzero(counts))
    precision = draw(st.integers(max(1, (used - 1).bit_length()), 15))
    return s, ans.model(counts, precision), draw(st.sampled_from([1, 2, 4]))


@settings(max_examples=150, deadline=None)
@given(coded())
def test_stream_matches_reference_and_round_trips(case):
    s, m, k = case
    payload = ans.encode(s, m, k)
    assert payload.tobytes() == rans_encode_ref(s, m.freqs, m.precision, k)
    back = ans.decode(payload.tobytes(), m, s.size, k)
    assert back.dtype == s.dtype
    np.testing.assert_array_equal(back, s)
    if s.size <= 200:
        assert rans_decode_ref(payload.tobytes(), m.freqs.tolist(), m.precision, k, s.size) == (
            s.tolist()
        )
    # Within the states' flush (4 bytes each, at most 2 of them overhead) of the model's bits.
    assert 8 * payload.size <= model_bits(s, m) + 32 * k + 16


def test_decoder_rejects_streams_it_did_not_write():
    s = np.array([0, 1, 2, 2, 2, 1, 0, 0, 0, 0] * 30, np.uint8)
    m = ans.model(np.bincount(s, minlength=256), 6)
    payload = ans.encode(s, m, 2).tobytes()
    with pytest.raises(ValueError):
        ans.decode(payload, m, s.size + 40, 2)  # runs out of words or ends elsewhere
    with pytest.raises(ValueError):
        ans.decode(payload[:-2], m, s.size, 2)
    with pytest.raises(ValueError):
        ans.decode(payload + b"\0\0", m, s.size, 2)  # bytes left over
    with pytest.raises(ValueError):
        ans.decode(b"\xff\xff\xff\xff" + payload[4:], m, s.size, 2)  # state >= 2**31
    with pytest.raises(ValueError):
        ans.decode(b"\x00\x00\x00\x00" + payload[4:], m, s.size, 2)  # state < 2**15
    with pytest.raises(ValueError):
        ans.decode(payload[:6], m, s.size, 2)  # shorter than the states
    with pytest.raises(ValueError):
        ans.decode_table(ans.Model(np.array([3, 3]), 2), 256)  # 6 slots of 4
    with pytest.raises(ValueError):
        ans.encode(np.array([5], np.uint8), m)  # a symbol without frequency
    with pytest.raises(ValueError):
        ans.encode_with(s, ans.encode_table(m), 3, np.empty(2000, np.uint8))
    with pytest.raises(TypeError):
        ans.encode(np.array([1], np.int32), m)


def test_random_streams_never_crash():
    """Any bytes under any valid model: a clean result or -1, reading only the payload."""
    rng = np.random.default_rng(2)
    for _ in range(400):
        precision = int(rng.integers(1, 16))
        used = int(rng.integers(1, min(256, 1 << precision) + 1))
        counts = np.zeros(256, np.int64)
        counts[rng.choice(256, used, replace=False)] = rng.integers(1, 1000, used)
        table = ans.decode_table(ans.model(counts, precision), 256)
        data = rng.integers(0, 256, int(rng.integers(0, 40))).astype(np.uint8)
        out = np.empty(int(rng.integers(0, 200)), np.uint8)
        used_bytes = ans.decode_with(data, table, int(rng.choice([1, 2, 4])), out)
        assert -1 <= used_bytes <= data.size


# --------------------------------------------------------------------------- blobs


def deepcod_like(shape, seed, spread=0.6):
    """8-centre indices of Gaussian activations, as DeepCOD's quantizer makes them."""
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32) * spread
    return np.abs(x[..., None] - CENTRES).argmin(-1).astype(np.uint8)


@st.composite
def arrays(draw):
    dtype = draw(st.sampled_from(DTYPES))
    shape = tuple(draw(st.lists(st.integers(0, 9), min_size=0, max_size=4)))
    if draw(st.booleans()):
        shape = (draw(st.integers(0, 6000)),)
    alphabet = draw(st.sampled_from([1, 2, 3, 5, 8, 255, 256, 1000, 40000]))
    kind = draw(st.sampled_from(["uniform", "geometric", "zipf", "distinct", "one"]))
    return make_array(dtype, shape, alphabet, kind, draw(st.integers(0, 2**32 - 1)))


@settings(max_examples=200, deadline=None)
@given(arrays())
def test_blob_round_trips_and_the_smaller_coder_wins(a):
    auto = entropy.encode(a)
    huff = entropy.encode(a, coder="huffman")
    try:
        forced = entropy.encode(a, coder="ans")
    except ValueError:  # more distinct values than rANS slots
        assert len(np.unique(a)) > 1 << ans.MAX_PRECISION
        forced = None
    for blob in (auto, huff, forced):
        if blob is None:
            continue
        back = entropy.decode(blob, shape=a.shape, dtype=a.dtype)
        assert back.dtype == a.dtype and back.shape == a.shape
        np.testing.assert_array_equal(back, a)
    best = len(huff) if forced is None else min(len(huff), len(forced))
    assert len(auto) == best
    assert auto == (huff if len(huff) <= best else forced)
    assert len(auto) <= entropy.max_blob_size(a.shape, a.dtype)
    assert entropy.encode(a.copy()) == auto  # deterministic


def test_edge_cases_round_trip():
    rng = np.random.default_rng(3)
    cases = [
        np.array(7, np.uint8),  # 0-d
        np.array([200], np.uint8),  # one symbol
        np.full(5000, -3, np.int8),  # all the same
        np.full((64, 1000), 9, np.uint16),
        np.arange(256, dtype=np.uint8),  # every byte once
        np.tile(np.arange(256, dtype=np.uint8), 40),  # flat over 256
        rng.permutation(np.arange(-128, 128, dtype=np.int8).repeat(7)),
        (rng.random(200_000) < 1e-4).astype(np.uint8),  # huge skew
        np.where(rng.random(5000) < 0.999, 0, rng.integers(0, 65536, 5000)).astype(np.uint16),
        rng.integers(0, 32768, 40_000).astype(np.uint16),  # as many values as slots
    ]
    for a in cases:
        blob = entropy.encode(a, coder="ans")
        np.testing.assert_array_equal(entropy.decode(blob), a)
        assert entropy.decode(blob).dtype == a.dtype
        np.testing.assert_array_equal(entropy.decode(entropy.encode(a)), a)
    # Empty arrays have no body; the coder flag stays clear.
    for a in (np.zeros(0, np.uint8), np.zeros((3, 0), np.int16)):
        assert (
            entropy.encode(a, coder="ans")
            == entropy.encode(a)
            == entropy.encode(a, coder="huffman")
        )
    with pytest.raises(ValueError, match="32768"):
        entropy.encode(np.arange(40000, dtype=np.uint16), coder="ans")
    with pytest.raises(ValueError, match="coder"):
        entropy.encode(np.zeros(3, np.uint8), coder="arith")


def test_constant_and_skewed_arrays_take_fractions_of_a_bit():
    """A constant array costs its padding floor (1/8 bit per symbol), not Huffman's 1 bit;
    a 99.9% skew costs about its entropy (0.011 bits)."""
    a = np.zeros(1 << 20, np.uint8)
    blob = entropy.encode(a)
    assert blob[3] & 0x08 and len(blob) <= (a.size >> 6) + 40
    assert len(blob) == entropy.max_blob_size(a.shape, a.dtype, levels=1) - 1  # lo 0: 1 byte
    np.testing.assert_array_equal(entropy.decode(blob, shape=a.shape, dtype=a.dtype), a)
    rng = np.random.default_rng(4)
    b = (rng.random(1 << 20) < 0.001).astype(np.uint8)
    h = entropy.empirical_entropy(b)
    assert 8 * len(entropy.encode(b)) <= max(b.size / 8, 1.01 * h * b.size) + 8 * 40


SIZE_CASES = [
    ("geometric 0.2", lambda n, r: np.minimum(r.geometric(0.2, n) - 1, 7)),
    ("geometric 0.35", lambda n, r: np.minimum(r.geometric(0.35, n) - 1, 7)),
    ("geometric 0.7", lambda n, r: np.minimum(r.geometric(0.7, n) - 1, 7)),
    ("deepcod 0.6", lambda n, r: deepcod_like(n, int(r.integers(1 << 30)))),
    ("deepcod 0.3", lambda n, r: deepcod_like(n, int(r.integers(1 << 30)), 0.3)),
]


@pytest.mark.parametrize("n", [3136, 12544, 1_000_000])
@pytest.mark.parametrize("name, draw", SIZE_CASES, ids=[c[0] for c in SIZE_CASES])
def test_size_within_half_a_percent_of_entropy_on_8_centres(name, draw, n):
    """The stream is within 0.5% of n * H (the empirical entropy) plus its fixed costs:
    header, frequency table and CRC, and the states' flush (at most 4 bytes each).
    Huffman, which needs whole bits, is 2-4% over on these; the choice takes rANS."""
    a = draw(n, np.random.default_rng(n)).astype(np.uint8).reshape(-1, 4)
    blob = entropy.encode(a)
    huff = entropy.encode(a, coder="huffman")
    parts = blob_parts(blob, a.shape)
    counts = np.bincount(a.reshape(-1), minlength=256)
    table = len(entropy._freq_table(ans.model(counts), parts["states"])[1])
    fixed = parts["body"] + table + 4 + 4 * parts["states"]  # header, table, CRC, flush
    h = entropy.empirical_entropy(a)
    ideal = a.size * h / 8
    print(
        f"{name} n={n}: H {h:.4f}, rANS {8 * len(blob) / a.size:.4f}, "
        f"Huffman {8 * len(huff) / a.size:.4f} bits/symbol; fixed {fixed} bytes"
    )
    assert blob[3] & 0x08, "the choice must take rANS here"
    assert len(blob) <= 1.005 * ideal + fixed
    assert len(blob) < len(huff)


# --------------------------------------------------------------------------- corruption


def ans_samples():
    rng = np.random.default_rng(5)
    return [
        np.array([4], np.uint8),
        np.full(300, 9, np.uint8),
        deepcod_like((2, 8, 5), 1),
        deepcod_like((4, 28, 28), 2),
        np.clip(rng.normal(0, 30, 400), -128, 127).astype(np.int8),
        rng.choice(np.array([-30000, -5, 0, 7, 29000], np.int16), 120),
        np.minimum(rng.geometric(0.3, 5000) - 1, 40).astype(np.uint16),
    ]


def test_truncations_flips_extensions_and_garbage_are_rejected():
    rng = np.random.default_rng(6)
    for a in ans_samples():
        blob = entropy.encode(a, coder="ans")
        np.testing.assert_array_equal(entropy.decode(blob), a)
        for cut in range(len(blob)):
            with pytest.raises(CorruptBlob):
                entropy.decode(blob[:cut])
        for extra in (b"\x00", b"\x00\x00", bytes(rng.integers(0, 256, 9).astype(np.uint8))):
            with pytest.raises(CorruptBlob):
                entropy.decode(blob + extra)
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


def test_hostile_rans_blobs_with_valid_checksums():
    """Mutate header, table and stream, cut or extend, and fix the CRC: every outcome is
    a clean decode or CorruptBlob, with the element count bounded by the blob. A stream
    is less redundant than a prefix code (an error in a word's low bits can be absorbed
    within a few symbols), so some mutations decode; each of those is then exactly the
    stream that its model codes its output to: a valid blob of other data, which only
    the CRC can tell apart, as with Huffman."""
    rng = np.random.default_rng(7)
    accepted = tried = 0
    for a in ans_samples():
        body = entropy.encode(a, coder="ans")[:-4]
        for _ in range(400):
            bad = bytearray(body)
            where = rng.integers(0, len(bad), rng.integers(1, 3))
            for pos in where:
                bad[pos] = rng.integers(0, 256) if rng.random() < 0.7 else bad[pos] ^ 1
            r = rng.random()
            if r < 0.15:
                bad = bad[: rng.integers(0, len(bad) + 1)]
            elif r < 0.25:
                bad += bytes(rng.integers(0, 256, rng.integers(1, 6)).astype(np.uint8))
            if bytes(bad) == body:
                continue
            tried += 1
            blob = seal(bytes(bad))
            if decodes_or_rejects(blob):
                accepted += 1
                assert_canonical(blob)
    assert accepted < tried // 4, (accepted, tried)


def assert_canonical(blob: bytes) -> None:
    """Re-encoding a decoded rANS blob's output under its own model gives its stream."""
    flags, dtype, _, n, pos, end = entropy._parse(blob)
    out = entropy.decode(blob)
    if not flags & 0x08:
        return
    alphabet = 256 if dtype.itemsize == 1 else 65536
    m, states, pos = entropy._parse_freqs(blob, pos, end, bool(flags & 0x04), alphabet)
    u = out.reshape(-1).view(np.uint8 if alphabet == 256 else np.uint16)
    if dtype.kind == "i":
        u = u ^ np.array(alphabet >> 1, u.dtype)
    stream = ans.encode(u, m, states).tobytes()
    floor = -(-n // entropy.ANS_SYMBOLS_PER_BYTE)
    assert blob[pos:end] == stream + bytes(max(0, floor - len(stream)))


def ans_header(shape=(4,), flags=0x08):
    out = b"DC\x01" + bytes([flags, len(shape)])
    for d in shape:
        out += entropy._varint(d)
    return out


def valid_body():
    """A real blob's body: 4 symbols [0, 1, 1, 1], so that the cases below mutate one field."""
    return entropy.encode(np.array([0, 1, 1, 1], np.uint8), coder="ans")[:-4]


@pytest.mark.parametrize(
    "body",
    [
        ans_header() + b"\x00\x02\x00\x02\xc0" + b"\x00\x80\x00\x00",  # precision 0
        ans_header() + b"\x02\x04\x00\x02\x13" + b"\x00\x80\x00\x00",  # width 4 > P + 1
        ans_header() + b"\x32\x02\x00\x02\x70" + b"\x00\x80\x00\x00" * 8,  # states 8
        ans_header() + b"\x42\x02\x00\x02\x70" + b"\x00\x80\x00\x00",  # reserved bit 6
        ans_header() + b"\x02\x00\x00\x02\x70" + b"\x00\x80\x00\x00",  # width 0
        ans_header() + b"\x02\x02\x00\x02\x50" + b"\x00\x80\x00\x00",  # 1 + 1 != 4
        ans_header() + b"\x02\x02\x00\x02\xf0" + b"\x00\x80\x00\x00",  # 3 + 3 != 4
        ans_header() + b"\x02\x02\x00\x02\x30" + b"\x00\x80\x00\x00",  # width 2 for 0 and 3
        ans_header() + b"\x02\x02\x00\x02\x70" + b"\x00\x80\x00",  # stream shorter than a state
        ans_header() + b"\x02\x02\x00\x02\x70" + b"\x00\x00\x00\x00",  # state 0 < 2**15
        ans_header() + b"\x02\x02\x00\x02\x70" + b"\x00\x00\x00\x80",  # state 2**31
        ans_header() + b"\x02\x02\x00\x02\x70" + b"\x00\x80\x00\x00\x00\x00",  # trailing word
        ans_header() + b"\x02\x02\x00\x02\x70" + b"\x01\x80\x00\x00",  # decodes, ends elsewhere
        ans_header((1000,)) + b"\x01\x02\x00\x01\x80" + b"\x00\x80\x00\x00",  # 1000 > 64 * 4
        ans_header((300,)) + b"\x01\x02\x00\x01\x80" + b"\x00\x80\x00\x00\x01",  # bad padding
        ans_header((200,)) + b"\x01\x02\x00\x01\x80" + b"\x00\x80\x00\x00\x00",  # pad 5 != 4
        ans_header((300,)) + b"\x01\x02\x00\x01\x80" + b"\x00\x80\x00\x00\x00" * 2,  # pad 10 != 5
        ans_header((0,)),  # rANS flag on an empty array
        ans_header((0,), flags=0x0C),
        ans_header() + b"\x02\x02",  # truncated table
        ans_header(flags=0x0C) + b"\x02\x02\x00\x02\x00\x80\x80" + b"\x00\x80\x00\x00",  # gap 0
    ],
)
def test_specific_hostile_rans_blobs(body):
    with pytest.raises(CorruptBlob):
        entropy.decode(seal(body))


def test_handmade_blobs_decode():
    """The layout by hand: [0, 1, 1, 1] under precision 2 with f = (1, 3), one state."""
    np.testing.assert_array_equal(entropy.decode(seal(valid_body())), [0, 1, 1, 1])
    payload = rans_encode_ref([0, 1, 1, 1], [1, 3], 2, 1)
    hand = ans_header() + b"\x02\x02\x00\x02\x70" + payload
    np.testing.assert_array_equal(entropy.decode(seal(hand)), [0, 1, 1, 1])
    # A constant array: precision 1, f = 2, the state untouched, padded to n / 64 bytes.
    hand = ans_header((300,)) + b"\x01\x02\x05\x01\x80" + b"\x00\x80\x00\x00" + b"\x00"
    np.testing.assert_array_equal(entropy.decode(seal(hand)), np.full(300, 5))


def test_a_large_legal_rans_blob_is_refused_before_any_work():
    """64M equal symbols are 1 MB of rANS (the padding floor): refused by length, by
    header or by the element limit before the 64 MB output exists."""
    import time
    import tracemalloc

    blob = entropy.encode(np.zeros(1 << 26, np.uint8))
    assert blob[3] & 0x08 and len(blob) >= (1 << 26) // 64
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


# --------------------------------------------------------------------------- compatibility

# Blobs written by the Huffman-only encoder before rANS existed: still decoded, and still
# what coder="huffman" writes, byte for byte.
OLD_BLOBS = [
    (
        np.array(
            [
                [2, 5, 3, 0, 0, 4, 0, 3],
                [3, 1, 0, 0, 0, 1, 1, 1],
                [7, 3, 2, 7, 0, 0, 2, 0],
                [0, 1, 1, 5, 2, 1, 1, 0],
                [0, 0, 2, 0, 1, 0, 4, 0],
            ],
            np.uint8,
        ),
        "444301000205080400082dc90462bd86b320927e5f292759054680390d2722",
    ),
    (
        np.array([-30000, -5, 0, 7, 29000, 7, 7, 0], np.int16),
        "44430107010803d01505abea010507c1e201fa8012dc65009c4bc60e",
    ),
    (np.full(9, 3, np.uint8), "4443010001090103018009000009d50c03"),
]


@pytest.mark.parametrize("a, hexblob", OLD_BLOBS)
def test_huffman_blobs_of_before_still_decode(a, hexblob):
    blob = bytes.fromhex(hexblob)
    np.testing.assert_array_equal(entropy.decode(blob, shape=a.shape, dtype=a.dtype), a)
    assert entropy.encode(a, coder="huffman") == blob


# --------------------------------------------------------------------------- GIL


def test_rans_kernels_let_other_threads_run():
    """The encoder and decoder loops run without the GIL, like the Huffman ones."""
    from tests.test_kernels_nogil import check, skewed

    s = skewed(1 << 26)
    counts = huffman.histogram(s)
    m = ans.model(counts)
    table = ans.encode_table(m)
    out = np.empty(ans.stream_capacity(s.size, 4), np.uint8)
    start = ans.encode_with(s, table, 4, out)
    payload = out[start:].copy()
    check(lambda: ans.encode_with(s, table, 4, out), rounds=3)
    dtable = ans.decode_table(m, 256)
    back = np.empty(s.size, np.uint8)
    check(lambda: ans.decode_with(payload, dtable, 4, back), rounds=3)
    assert np.array_equal(back, s)
