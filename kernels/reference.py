"""Plain numpy / Python references for the kernels, written independently for the tests.

They favour obviousness over speed: package-merge with explicit symbol multisets, codes
as bit matrices, a bit-list decoder. Each follows the same conventions (rounding, tie
breaks, bit order) as its kernel, so results must match exactly.
"""

from __future__ import annotations

import heapq

import numpy as np

__all__ = [
    "canonical_codes_ref",
    "centre_values_ref",
    "code_lengths_ref",
    "dequantize_uniform_ref",
    "histogram_ref",
    "huffman_decode_ref",
    "huffman_encode_ref",
    "huffman_lengths_ref",
    "nearest_centre_ref",
    "pack_ref",
    "quantize_uniform_ref",
    "unpack_ref",
]


# --------------------------------------------------------------------------- quantize


def _params_view(a: np.ndarray, p, axis):
    p = np.asarray(p, dtype=np.float32)
    if axis is None:
        return p
    shape = [1] * a.ndim
    shape[axis] = -1
    return p.reshape(shape)


def quantize_uniform_ref(x, bits, scale, offset, axis=None):
    a = np.asarray(x, dtype=np.float32)
    qmax = np.float32((1 << bits) - 1)
    inv = np.float32(1) / _params_view(a, scale, axis)
    with np.errstate(all="ignore"):  # inf and NaN inputs are part of the contract
        v = np.floor((a - _params_view(a, offset, axis)) * inv + np.float32(0.5))
    v = np.where(v >= 0, np.minimum(v, qmax), np.float32(0))  # NaN fails v >= 0 -> 0
    return v.astype(np.uint8 if bits <= 8 else np.uint16)


def dequantize_uniform_ref(q, scale, offset, axis=None):
    c = np.asarray(q)
    with np.errstate(all="ignore"):
        return c.astype(np.float32) * _params_view(c, scale, axis) + _params_view(c, offset, axis)


def nearest_centre_ref(x, centres):
    c = np.asarray(centres, dtype=np.float32).reshape(-1)
    uniq = sorted(set(c.tolist()))
    first = {v: int(np.flatnonzero(c == v)[0]) for v in uniq}
    s = np.array(uniq, dtype=np.float64)
    mids = (s[:-1] + s[1:]) * 0.5
    a = np.asarray(x, dtype=np.float32)
    pos = np.searchsorted(mids, a.astype(np.float64), side="left")
    pos = np.where(np.isnan(a), 0, pos)
    lut = np.array([first[v] for v in uniq], dtype=np.uint8)
    return lut[pos]


def centre_values_ref(indices, centres):
    return np.asarray(centres, dtype=np.float32).reshape(-1)[np.asarray(indices)]


# --------------------------------------------------------------------------- bit packing


def pack_ref(values, k):
    v = np.asarray(values).reshape(-1).astype(np.uint32)
    bits = ((v[:, None] >> np.arange(k - 1, -1, -1, dtype=np.uint32)) & 1).astype(np.uint8)
    return np.packbits(bits.reshape(-1))


def unpack_ref(data, k, n):
    bits = np.unpackbits(np.frombuffer(bytes(data), np.uint8))[: n * k].reshape(n, k)
    weights = (1 << np.arange(k - 1, -1, -1)).astype(np.uint32)
    return (bits.astype(np.uint32) @ weights).astype(np.uint8 if k <= 8 else np.uint16)


# --------------------------------------------------------------------------- Huffman


def histogram_ref(symbols, alphabet_size):
    return np.bincount(np.asarray(symbols).reshape(-1), minlength=alphabet_size).astype(np.int64)


def code_lengths_ref(counts, limit):
    """Textbook package-merge: limit rounds of package-then-merge, then count symbols."""
    counts = np.asarray(counts, dtype=np.int64)
    lengths = np.zeros(counts.size, np.uint8)
    used = [s for s in range(counts.size) if counts[s] > 0]
    if not used:
        return lengths
    if len(used) == 1:
        lengths[used[0]] = 1
        return lengths
    leaves = [(int(counts[s]), 0, (s,)) for s in sorted(used, key=lambda s: (counts[s], s))]
    items = list(leaves)
    for _ in range(limit - 1):
        packages = [
            (items[i][0] + items[i + 1][0], 1, items[i][2] + items[i + 1][2])
            for i in range(0, len(items) - 1, 2)
        ]
        items = sorted(leaves + packages, key=lambda t: (t[0], t[1]))
    for _, _, syms in items[: 2 * len(used) - 2]:
        for s in syms:
            lengths[s] += 1
    return lengths


def huffman_lengths_ref(counts):
    """Unlimited Huffman code lengths via a heap (to check package-merge's optimality)."""
    counts = np.asarray(counts, dtype=np.int64)
    lengths = np.zeros(counts.size, np.int64)
    heap = [(int(c), s, [s]) for s, c in enumerate(counts) if c > 0]
    if len(heap) == 1:
        lengths[heap[0][1]] = 1
    heapq.heapify(heap)
    while len(heap) > 1:
        w1, k1, s1 = heapq.heappop(heap)
        w2, k2, s2 = heapq.heappop(heap)
        for s in s1 + s2:
            lengths[s] += 1
        heapq.heappush(heap, (w1 + w2, min(k1, k2), s1 + s2))
    return lengths


def canonical_codes_ref(lengths):
    lengths = np.asarray(lengths)
    codes = np.zeros(lengths.size, np.uint32)
    code, prev = 0, 0
    for s in sorted((s for s in range(lengths.size) if lengths[s]), key=lambda s: (lengths[s], s)):
        code <<= int(lengths[s]) - prev
        prev = int(lengths[s])
        codes[s] = code
        code += 1
    return codes


def huffman_encode_ref(symbols, lengths):
    """(payload uint8 array, bits): each code's bits laid out MSB-first, then packbits."""
    s = np.asarray(symbols).reshape(-1).astype(np.int64)
    lengths = np.asarray(lengths).astype(np.int64)
    if s.size == 0:
        return np.empty(0, np.uint8), 0
    codes = canonical_codes_ref(lengths).astype(np.int64)
    ln, cd = lengths[s], codes[s]
    m = int(ln.max())
    left = cd << (m - ln)  # left-aligned in m bits
    bits = (left[:, None] >> np.arange(m - 1, -1, -1)) & 1
    keep = np.arange(m)[None, :] < ln[:, None]
    flat = bits[keep].astype(np.uint8)
    return np.packbits(flat), int(flat.size)


def huffman_decode_ref(payload, lengths, n):
    """Walk the bits with a {(length, code): symbol} map; returns int64 symbols."""
    lengths = np.asarray(lengths)
    codes = canonical_codes_ref(lengths)
    book = {(int(lengths[s]), int(codes[s])): s for s in range(lengths.size) if lengths[s]}
    bits = np.unpackbits(np.frombuffer(bytes(payload), np.uint8)).tolist()
    out = np.empty(n, np.int64)
    pos = 0
    for i in range(n):
        code, ln = 0, 0
        while (ln, code) not in book:
            if ln > 16 or pos >= len(bits):
                raise ValueError("invalid or truncated payload")
            code = (code << 1) | bits[pos]
            ln += 1
            pos += 1
        out[i] = book[(ln, code)]
    return out
