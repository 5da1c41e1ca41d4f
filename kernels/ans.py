"""Static-model rANS (range asymmetric numeral systems) over alphabets of up to 65536 symbols.

Why: a Huffman code spends a whole number of bits on each symbol, at least one, which
puts it 2-4% above the entropy on DeepCOD's peaked 8-centre histograms; rANS spends
log2(M / f) bits on a symbol of frequency f out of M, within about 0.1% of the entropy.

Model: frequencies f_s >= 1 of the used symbols, summing to M = 2**P (P = 1..15), made
from the histogram (`quantize`, `model`); the blob carries them. States: x in
[L, 2**31), L = 2**15, renormalised by 16-bit words; K = 1, 2 or 4 states interleaved
(symbol i uses state i % K), since one state's chain of dependent steps is what limits
speed on long arrays, while each state costs about 3 bytes of flush on short ones.

Encoding runs backwards from the last symbol and writes the stream backwards, so that
decoding reads it forwards: the K final states (4 bytes each, little-endian, state 0
first), then the 16-bit little-endian words in the order the decoder takes them. The
encoder divides by f through a reciprocal: floor(x / f) = (x * m) >> (31 + l) with
l = ceil(log2 f) and m = ceil(2**(31 + l) / f) < 2**32, exact for every x < 2**31
(Granlund and Montgomery 1994, theorem 4.2) and never past 63 bits.

Decoding trusts only a model that `check_model` accepted: every step keeps each state
in [L, 2**31) (a step never grows it and leaves at least 2**(15 - P) before one word is
read), reads at most one word per symbol, never past the payload, and the states must
end where the encoder began (L), so that a corrupt stream is caught even past the CRC.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

__all__ = [
    "LOW",
    "MAX_PRECISION",
    "Model",
    "check_model",
    "decode",
    "decode_table",
    "decode_with",
    "encode",
    "encode_table",
    "encode_with",
    "estimated_bits",
    "model",
    "quantize",
    "states_for",
    "stream_capacity",
]

LOW = 1 << 15  # L: states lie in [LOW, 2**31)
MAX_PRECISION = 15  # M = 2**P <= LOW, so that a decoding step leaves x >= 1
_STATES = (1, 2, 4)


class Model(NamedTuple):
    """Frequencies over the whole alphabet (0 = unused) summing to 2**precision."""

    freqs: np.ndarray  # int64, one per symbol of the alphabet
    precision: int


# --------------------------------------------------------------------------- model


@njit(cache=True, nogil=True)
def _sift(heap, key, i, size):
    """Move heap[i] down to its place in a max-heap of `size` indices ordered by key."""
    while True:
        top = i
        left = 2 * i + 1
        right = left + 1
        if left < size and key[heap[left]] > key[heap[top]]:
            top = left
        if right < size and key[heap[right]] > key[heap[top]]:
            top = right
        if top == i:
            return
        heap[i], heap[top] = heap[top], heap[i]
        i = top


@njit(cache=True, nogil=True)
def _quantize(counts, total, precision):
    """Frequencies >= 1 summing to 2**precision for positive counts (in their order).

    Each starts at its rounded share, then the sum is corrected one unit at a time where
    it costs least: the cost of moving f by one is about c / (f +- 1/2) bits times a
    constant, so a heap on that key gives the greedy optimum of this separable convex
    problem. Exact integer inputs and one float division per key: deterministic."""
    u = counts.size
    m = np.int64(1) << precision
    f = np.empty(u, np.int64)
    s = 0
    for i in range(u):
        v = (2 * counts[i] * m + total) // (2 * total)
        f[i] = v if v > 0 else 1
        s += f[i]
    diff = m - s
    if diff == 0:
        return f
    key = np.empty(u, np.float64)
    grow = diff > 0
    for i in range(u):
        if grow:
            key[i] = 2.0 * counts[i] / (2 * f[i] + 1)
        elif f[i] > 1:
            key[i] = -2.0 * counts[i] / (2 * f[i] - 1)
        else:
            key[i] = -np.inf
    heap = np.arange(u)
    for i in range(u // 2 - 1, -1, -1):
        _sift(heap, key, i, u)
    step = 1 if grow else -1
    for _ in range(abs(diff)):
        t = heap[0]
        if key[t] == -np.inf:  # nothing left to take from: u > 2**precision
            f[0] = 0
            return f
        f[t] += step
        if grow:
            key[t] = 2.0 * counts[t] / (2 * f[t] + 1)
        elif f[t] > 1:
            key[t] = -2.0 * counts[t] / (2 * f[t] - 1)
        else:
            key[t] = -np.inf
        _sift(heap, key, 0, u)
    return f


@njit(cache=True, nogil=True)
def _best_model(counts, lo, hi):
    """(frequencies over the alphabet, precision) for the precision in lo..hi with the
    fewest payload bits plus table bits (the used range, or twice the used symbols if
    fewer, at the widest frequency's bit length); ties go to the lower precision."""
    u = 0
    first = -1
    last = -1
    total = 0
    for s in range(counts.size):
        if counts[s] > 0:
            u += 1
            total += counts[s]
            last = s
            if first < 0:
                first = s
    cu = np.empty(u, np.int64)
    j = 0
    for s in range(first, last + 1):
        if counts[s] > 0:
            cu[j] = counts[s]
            j += 1
    entries = min(last - first + 1, 2 * u)
    best_bits = np.inf
    best_p = lo
    best = np.empty(0, np.int64)
    for p in range(lo, hi + 1):
        f = _quantize(cu, total, p)
        bits = 0.0
        widest = 0
        for i in range(u):
            bits += cu[i] * (p - np.log2(f[i]))
            widest = max(widest, f[i])
        width = 0
        while widest:
            width += 1
            widest >>= 1
        bits += entries * width
        if bits < best_bits:
            best_bits = bits
            best_p = p
            best = f
    freqs = np.zeros(counts.size, np.int64)
    j = 0
    for s in range(first, last + 1):
        if counts[s] > 0:
            freqs[s] = best[j]
            j += 1
    return freqs, best_p


def quantize(counts: np.ndarray, precision: int) -> np.ndarray:
    """int64 frequencies over the alphabet (0 where the count is 0) summing to 2**precision."""
    c = np.ascontiguousarray(counts, dtype=np.int64).reshape(-1)
    if c.size and int(c.min()) < 0:
        raise ValueError("counts must be non-negative")
    used = np.flatnonzero(c)
    if not 1 <= int(precision) <= MAX_PRECISION or not 1 <= used.size <= 1 << int(precision):
        raise ValueError(f"cannot model {used.size} symbols with precision {precision}")
    out = np.zeros(c.size, np.int64)
    out[used] = _quantize(np.ascontiguousarray(c[used]), int(c[used].sum()), int(precision))
    return out


def model(counts: np.ndarray, precision: int | None = None) -> Model | None:
    """The model for a histogram: the given precision, or the one (1..15) with the fewest
    payload plus table bits. None where no symbol or more than 2**15 are used."""
    c = np.ascontiguousarray(counts, dtype=np.int64).reshape(-1)
    if precision is not None:
        return Model(quantize(c, precision), int(precision))
    if c.size and int(c.min()) < 0:
        raise ValueError("counts must be non-negative")
    return _model(c)


def _model(counts: np.ndarray) -> Model | None:
    """`model` of a contiguous int64 histogram known to be non-negative."""
    used = int(np.count_nonzero(counts))
    if used == 0 or used > 1 << MAX_PRECISION:
        return None
    freqs, p = _best_model(counts, max(1, (used - 1).bit_length()), MAX_PRECISION)
    return Model(freqs, int(p))


@njit(cache=True, nogil=True)
def _estimate(counts, freqs, precision):
    bits = 0.0
    for s in range(counts.size):
        if counts[s] > 0:
            bits += counts[s] * (precision - np.log2(freqs[s]))
    return bits


def estimated_bits(counts: np.ndarray, m: Model) -> float:
    """Payload bits of these symbols under the model, before the states' flush."""
    c = np.ascontiguousarray(counts, dtype=np.int64).reshape(-1)
    f = np.ascontiguousarray(m.freqs, dtype=np.int64).reshape(-1)
    if c.size != f.size or np.any((c > 0) & (f <= 0)):
        raise ValueError("a counted symbol has no frequency in the model")
    return float(_estimate(c, f, m.precision))


def states_for(n: int) -> int:
    """Interleaved states for n symbols: one state's flush (about 3 bytes) matters on
    short arrays, its chain of dependent steps on long ones."""
    return 1 if n < 1 << 11 else 2 if n < 1 << 16 else 4


@njit(cache=True, nogil=True)
def _check_model(freqs, precision):
    m = np.int64(1) << precision
    total = np.int64(0)
    for s in range(freqs.size):
        f = np.int64(freqs[s])
        if f < 0 or f > m:
            return 1
        total += f
    return 0 if total == m else 2


def check_model(freqs: np.ndarray, precision: int) -> str | None:
    """Why these frequencies cannot drive the decoder, or None: every one in 0..M and
    their sum exactly M = 2**precision, precision 1..15."""
    if not 1 <= precision <= MAX_PRECISION:
        return f"precision {precision} outside 1..{MAX_PRECISION}"
    f = np.ascontiguousarray(freqs).reshape(-1)
    if f.dtype.kind not in "ui":
        raise TypeError(f"frequencies must be integers, got {f.dtype}")
    why = _check_model(f.astype(np.int64, copy=False), int(precision))
    if why == 1:
        return "a frequency outside 0..2**precision"
    if why == 2:
        return f"frequencies do not sum to 2**{precision}"
    return None


# --------------------------------------------------------------------------- encode


@njit(cache=True, nogil=True)
def _encode_table(freqs, precision):
    table = np.zeros((5, freqs.size), np.uint64)
    m = np.int64(1) << precision
    start = np.int64(0)
    for s in range(freqs.size):
        f = np.int64(freqs[s])
        if f > 0:
            ceil_log = 0
            while (np.int64(1) << ceil_log) < f:
                ceil_log += 1
            shift = 31 + ceil_log
            table[0, s] = np.uint64(f) << np.uint64(31 - precision)  # x_max
            table[1, s] = np.uint64(((np.int64(1) << shift) + f - 1) // f)  # < 2**32
            table[2, s] = np.uint64(shift)
            table[3, s] = np.uint64(start)
            table[4, s] = np.uint64(m - f)
        start += f
    return table


def encode_table(m: Model) -> np.ndarray:
    """uint64 rows over the symbols: x_max = f << (31 - P), the reciprocal m, its shift,
    the start of the symbol's slots and M - f; zero for unused symbols. Separate rows:
    loads are cheaper than unpacking fields in the encoder's loop (16% on 1M symbols)."""
    why = check_model(m.freqs, m.precision)
    if why:
        raise ValueError(why)
    return _encode_table(np.ascontiguousarray(m.freqs, dtype=np.int64).reshape(-1), m.precision)


@njit(cache=True, nogil=True, inline="always")
def _put(x, x_max, rcp, shift, start, rest):
    """(state after coding a symbol of these table entries; the word to emit; 1 if
    emitted). Scalars only: numba would count references to arrays passed to an inlined
    helper on every call."""
    c = x >= x_max
    w = x & np.uint64(0xFFFF)
    if c:
        x >>= np.uint64(16)
    return x + start + ((x * rcp) >> shift) * rest, w, np.int64(c)


@njit(cache=True, nogil=True)
def _encode(symbols, table, k, out):
    """Write the stream at the end of out; return the index of its first byte.

    out must hold 2n + 4k bytes: a symbol emits at most one word (x < 2**31 and
    x_max >= 2**16), so at every symbol at least 2 bytes per symbol still to code plus
    the flush lie below p, and the word is stored unconditionally (branch-free) at
    p - 2 and kept by moving p only when emitted. The caller guarantees that every
    symbol has a table entry and that nothing changes the symbols meanwhile (this runs
    without the GIL); a symbol without one would still emit at most one word, garbage."""
    n = symbols.size
    p = out.size
    low = np.uint64(LOW)
    x_max = table[0]
    rcp = table[1]
    shift = table[2]
    start = table[3]
    rest = table[4]
    xs = np.empty(4, np.uint64)
    for j in range(4):
        xs[j] = low
    i = n - 1
    full = n - n % k
    while i >= full:  # the last n % k symbols, states 0 .. n % k - 1
        s = np.int64(symbols[np.uint64(i)])
        x, w, c = _put(xs[i - full], x_max[s], rcp[s], shift[s], start[s], rest[s])
        xs[i - full] = x
        out[p - 2] = np.uint8(w & np.uint64(0xFF))
        out[p - 1] = np.uint8(w >> np.uint64(8))
        p -= 2 * c
        i -= 1
    x0 = xs[0]
    x1 = xs[1]
    x2 = xs[2]
    x3 = xs[3]
    m8 = np.uint64(0xFF)
    e8 = np.uint64(8)
    if k == 1:
        while i >= 0:
            s = np.int64(symbols[np.uint64(i)])
            x0, w, c = _put(x0, x_max[s], rcp[s], shift[s], start[s], rest[s])
            out[np.uint64(p - 2)] = np.uint8(w & m8)
            out[np.uint64(p - 1)] = np.uint8(w >> e8)
            p -= 2 * c
            i -= 1
    elif k == 2:
        while i >= 0:
            s1 = np.int64(symbols[np.uint64(i)])
            s0 = np.int64(symbols[np.uint64(i - 1)])
            x1, w, c = _put(x1, x_max[s1], rcp[s1], shift[s1], start[s1], rest[s1])
            out[np.uint64(p - 2)] = np.uint8(w & m8)
            out[np.uint64(p - 1)] = np.uint8(w >> e8)
            p -= 2 * c
            x0, w, c = _put(x0, x_max[s0], rcp[s0], shift[s0], start[s0], rest[s0])
            out[np.uint64(p - 2)] = np.uint8(w & m8)
            out[np.uint64(p - 1)] = np.uint8(w >> e8)
            p -= 2 * c
            i -= 2
    else:
        while i >= 0:
            s3 = np.int64(symbols[np.uint64(i)])
            s2 = np.int64(symbols[np.uint64(i - 1)])
            s1 = np.int64(symbols[np.uint64(i - 2)])
            s0 = np.int64(symbols[np.uint64(i - 3)])
            x3, w, c = _put(x3, x_max[s3], rcp[s3], shift[s3], start[s3], rest[s3])
            out[np.uint64(p - 2)] = np.uint8(w & m8)
            out[np.uint64(p - 1)] = np.uint8(w >> e8)
            p -= 2 * c
            x2, w, c = _put(x2, x_max[s2], rcp[s2], shift[s2], start[s2], rest[s2])
            out[np.uint64(p - 2)] = np.uint8(w & m8)
            out[np.uint64(p - 1)] = np.uint8(w >> e8)
            p -= 2 * c
            x1, w, c = _put(x1, x_max[s1], rcp[s1], shift[s1], start[s1], rest[s1])
            out[np.uint64(p - 2)] = np.uint8(w & m8)
            out[np.uint64(p - 1)] = np.uint8(w >> e8)
            p -= 2 * c
            x0, w, c = _put(x0, x_max[s0], rcp[s0], shift[s0], start[s0], rest[s0])
            out[np.uint64(p - 2)] = np.uint8(w & m8)
            out[np.uint64(p - 1)] = np.uint8(w >> e8)
            p -= 2 * c
            i -= 4
    xs[0] = x0
    xs[1] = x1
    xs[2] = x2
    xs[3] = x3
    for j in range(k - 1, -1, -1):  # state 0 ends up first
        p -= 4
        for b in range(4):
            out[p + b] = np.uint8((xs[j] >> np.uint64(8 * b)) & m8)
    return p


def stream_capacity(n: int, states: int) -> int:
    """Bytes that `encode_with` needs in its output for n symbols."""
    return 2 * n + 4 * states


def encode_with(symbols: np.ndarray, table: np.ndarray, states: int, out: np.ndarray) -> int:
    """Encode contiguous uint8/uint16 symbols into the end of out; return where the stream
    starts. The caller vouches that every symbol has a nonzero frequency in the table's
    model and that out holds `stream_capacity` bytes; `encode` is the checked entry."""
    if states not in _STATES:
        raise ValueError(f"states must be 1, 2 or 4, got {states}")
    if out.size < stream_capacity(symbols.size, states):
        raise ValueError(
            f"output of {out.size} bytes, need {stream_capacity(symbols.size, states)}"
        )
    return int(_encode(symbols, table, states, out))


def encode(symbols: np.ndarray, m: Model, states: int | None = None) -> np.ndarray:
    """The rANS stream (uint8 array) of uint8/uint16 symbols under a model."""
    s = np.asarray(symbols)
    if s.dtype.kind != "u" or s.dtype.itemsize > 2:
        raise TypeError(f"symbols must be uint8 or uint16, got {s.dtype}")
    s = np.ascontiguousarray(s.reshape(-1), dtype=s.dtype.newbyteorder("=")).copy()
    why = check_model(m.freqs, m.precision)
    if why:
        raise ValueError(why)
    freqs = np.asarray(m.freqs)
    if s.size and (int(s.max()) >= freqs.size or not np.all(freqs[s] > 0)):
        raise ValueError("a symbol has no frequency in the model")
    k = states_for(s.size) if states is None else int(states)
    out = np.empty(stream_capacity(s.size, k), np.uint8)
    start = encode_with(s, encode_table(m), k, out)
    return out[start:].copy()


# --------------------------------------------------------------------------- decode


@njit(cache=True)
def _decode_table(freqs, precision, symbols):
    """slot -> f | (slot - start) << 16, and slot -> symbol into `symbols`; False if the
    frequencies overrun 2**precision slots (the caller checks their sum first)."""
    m = 1 << precision
    table = np.empty(m, np.uint32)
    c = 0
    for s in range(freqs.size):
        f = freqs[s]
        if f < 0 or c + f > m:
            return table, False
        for j in range(f):
            table[c + j] = np.uint32(f | (j << 16))
            symbols[c + j] = s
        c += f
    return table, c == m


class DecodeTable(NamedTuple):
    """Per slot of 2**precision: the step's constants and the symbol."""

    steps: np.ndarray  # uint32: f | (slot - start) << 16
    symbols: np.ndarray  # uint8 or uint16
    precision: int


def decode_table(m: Model, alphabet: int) -> DecodeTable:
    """Slot tables for a model over 256 or 65536 symbols (ValueError if it is not one)."""
    if not 1 <= m.precision <= MAX_PRECISION:
        raise ValueError(f"precision {m.precision} outside 1..{MAX_PRECISION}")
    freqs = np.ascontiguousarray(m.freqs, dtype=np.int64).reshape(-1)
    if freqs.size > alphabet:
        raise ValueError(f"a model of {freqs.size} symbols for an alphabet of {alphabet}")
    symbols = np.empty(1 << m.precision, np.uint8 if alphabet <= 256 else np.uint16)
    steps, ok = _decode_table(freqs, m.precision, symbols)
    if not ok:  # the same conditions as check_model, checked while filling
        raise ValueError(f"frequencies are negative or do not sum to 2**{m.precision}")
    return DecodeTable(steps, symbols, m.precision)


@njit(cache=True, nogil=True, inline="always")
def _step(x, e, precision):
    """The state before the symbol whose slot entry is e (scalars only, as `_put`)."""
    return (e & np.uint64(0xFFFF)) * (x >> precision) + (e >> np.uint64(16))


@njit(cache=True, nogil=True, inline="always")
def _refill(x, b0, b1):
    """(state, 1 if the word b0 | b1 << 8 went in): branch-free, a word in when x < LOW."""
    c = np.uint64(x < np.uint64(LOW))
    w = np.uint64(b0) | (np.uint64(b1) << np.uint64(8))
    return (x << (c << np.uint64(4))) | (w * c), np.int64(c)


@njit(cache=True, nogil=True)
def _decode(data, steps, symbols, precision, k, out):
    """Decode out.size symbols; return the bytes of data used, or -1 if the stream is not
    one the encoder wrote: a state outside [LOW, 2**31), words missing, or states that
    do not end at LOW. Reads only data[0 : data.size]: the fast loops need two bytes
    per state left, the tail checks each read."""
    n = out.size
    nd = data.size
    low = np.uint64(LOW)
    high = np.uint64(1 << 31)
    mask = np.uint64((1 << precision) - 1)
    prec = np.uint64(precision)
    if nd < 4 * k:
        return -1
    xs = np.empty(4, np.uint64)
    p = 0
    for j in range(4):
        xs[j] = low
    for j in range(k):
        x = np.uint64(0)
        for b in range(4):
            x |= np.uint64(data[p + b]) << np.uint64(8 * b)
        if x < low or x >= high:
            return -1
        xs[j] = x
        p += 4
    x0 = xs[0]
    x1 = xs[1]
    x2 = xs[2]
    x3 = xs[3]
    i = 0
    if k == 1:
        while i < n and p + 2 <= nd:
            t0 = x0 & mask
            out[np.uint64(i)] = symbols[t0]
            x0 = _step(x0, np.uint64(steps[t0]), prec)
            x0, c = _refill(x0, data[np.uint64(p)], data[np.uint64(p + 1)])
            p += 2 * c
            i += 1
    elif k == 2:
        while i + 2 <= n and p + 4 <= nd:
            t0 = x0 & mask
            t1 = x1 & mask
            out[np.uint64(i)] = symbols[t0]
            out[np.uint64(i + 1)] = symbols[t1]
            x0 = _step(x0, np.uint64(steps[t0]), prec)
            x1 = _step(x1, np.uint64(steps[t1]), prec)
            x0, c = _refill(x0, data[np.uint64(p)], data[np.uint64(p + 1)])
            p += 2 * c
            x1, c = _refill(x1, data[np.uint64(p)], data[np.uint64(p + 1)])
            p += 2 * c
            i += 2
    else:
        while i + 4 <= n and p + 8 <= nd:
            t0 = x0 & mask
            t1 = x1 & mask
            t2 = x2 & mask
            t3 = x3 & mask
            out[np.uint64(i)] = symbols[t0]
            out[np.uint64(i + 1)] = symbols[t1]
            out[np.uint64(i + 2)] = symbols[t2]
            out[np.uint64(i + 3)] = symbols[t3]
            x0 = _step(x0, np.uint64(steps[t0]), prec)
            x1 = _step(x1, np.uint64(steps[t1]), prec)
            x2 = _step(x2, np.uint64(steps[t2]), prec)
            x3 = _step(x3, np.uint64(steps[t3]), prec)
            x0, c = _refill(x0, data[np.uint64(p)], data[np.uint64(p + 1)])
            p += 2 * c
            x1, c = _refill(x1, data[np.uint64(p)], data[np.uint64(p + 1)])
            p += 2 * c
            x2, c = _refill(x2, data[np.uint64(p)], data[np.uint64(p + 1)])
            p += 2 * c
            x3, c = _refill(x3, data[np.uint64(p)], data[np.uint64(p + 1)])
            p += 2 * c
            i += 4
    xs[0] = x0
    xs[1] = x1
    xs[2] = x2
    xs[3] = x3
    while i < n:  # the tail, near the end of the symbols or of the data: checked reads
        j = i % k
        t = xs[j] & mask
        out[i] = symbols[t]
        x = _step(xs[j], np.uint64(steps[t]), prec)
        if x < low:
            if p + 2 > nd:
                return -1
            x = (x << np.uint64(16)) | np.uint64(data[p]) | (np.uint64(data[p + 1]) << np.uint64(8))
            p += 2
        xs[j] = x
        i += 1
    for j in range(k):
        if xs[j] != low:
            return -1
    return p


def decode_with(payload: np.ndarray, table: DecodeTable, states: int, out: np.ndarray) -> int:
    """Fill out (uint8/uint16) from a uint8 payload; return the bytes used, -1 if invalid."""
    if states not in _STATES:
        raise ValueError(f"states must be 1, 2 or 4, got {states}")
    return int(_decode(payload, table.steps, table.symbols, table.precision, states, out))


def decode(payload, m: Model, n: int, states: int | None = None) -> np.ndarray:
    """Decode n symbols (uint8 if the model's alphabet fits, else uint16); ValueError if
    the payload is not exactly a stream of them."""
    freqs = np.asarray(m.freqs)
    alphabet = 256 if freqs.size <= 256 else 65536
    if not isinstance(payload, bytes | bytearray | memoryview):
        payload = np.ascontiguousarray(payload, dtype=np.uint8).tobytes()
    d = np.frombuffer(payload, np.uint8)
    k = states_for(int(n)) if states is None else int(states)
    out = np.empty(int(n), np.uint8 if alphabet == 256 else np.uint16)
    used = decode_with(d, decode_table(m, alphabet), k, out)
    if used < 0:
        raise ValueError("payload is not a rANS stream of this model")
    if used != d.size:
        raise ValueError(f"payload has {d.size} bytes but the stream uses {used}")
    return out
