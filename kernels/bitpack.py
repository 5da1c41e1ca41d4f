"""Bit packing of k-bit symbols (k = 1..16), MSB-first like `np.packbits`.

Symbol i occupies bits [i*k, (i+1)*k) of the stream, most significant bit first; the
last byte is zero-padded. MSB-first matches the Huffman payloads, so one bit order
serves both.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["pack", "packed_size", "unpack"]


@njit(cache=True, nogil=True)
def _pack(values, k, out):
    """Return the index of the first value that needs more than k bits, or -1."""
    limit = 1 << k
    acc = 0  # int64 is enough: at most k + 7 <= 23 live bits, older bits are masked off
    nb = 0
    p = 0
    for i in range(values.size):
        v = np.int64(values[i])
        if v >= limit:
            return i
        acc = (acc << k) | v
        nb += k
        while nb >= 8:
            nb -= 8
            out[p] = (acc >> nb) & 0xFF
            p += 1
    if nb > 0:
        out[p] = (acc << (8 - nb)) & 0xFF
    return -1


@njit(cache=True, nogil=True)
def _unpack(data, k, out):
    mask = (1 << k) - 1
    acc = 0
    nb = 0
    p = 0
    for i in range(out.size):
        while nb < k:
            acc = ((acc << 8) | np.int64(data[p])) & 0xFFFFFF
            nb += 8
            p += 1
        nb -= k
        out[i] = (acc >> nb) & mask


def packed_size(n: int, k: int) -> int:
    """Bytes needed for n symbols of k bits."""
    return (n * k + 7) // 8


def _check_k(k: int) -> int:
    k = int(k)
    if not 1 <= k <= 16:
        raise ValueError(f"k must be in 1..16, got {k}")
    return k


def pack(values: np.ndarray, k: int) -> np.ndarray:
    """Pack unsigned integers below 2**k into a uint8 array of `packed_size(n, k)` bytes."""
    k = _check_k(k)
    v = np.asarray(values)
    if v.dtype.kind not in "ui" or v.dtype.itemsize > 2:
        raise TypeError(f"pack takes 8- or 16-bit integers, got {v.dtype}")
    if v.dtype.kind == "i":
        if v.size and int(v.min()) < 0:
            raise ValueError("pack takes non-negative values")
        v = v.astype(np.uint16 if v.dtype.itemsize == 2 else np.uint8)
    v = np.ascontiguousarray(v.reshape(-1), dtype=v.dtype.newbyteorder("="))
    out = np.empty(packed_size(v.size, k), np.uint8)
    bad = _pack(v, k, out)
    if bad >= 0:
        raise ValueError(f"value {int(v[bad])} at index {bad} does not fit in {k} bits")
    return out


def unpack(data, k: int, n: int) -> np.ndarray:
    """Unpack n k-bit symbols; uint8 for k <= 8, else uint16."""
    k = _check_k(k)
    n = int(n)
    if n < 0:
        raise ValueError("n must be non-negative")
    d = np.frombuffer(data, np.uint8) if isinstance(data, bytes | bytearray | memoryview) else data
    d = np.ascontiguousarray(d, dtype=np.uint8).reshape(-1)
    if d.size < packed_size(n, k):
        raise ValueError(f"{d.size} bytes hold fewer than {n} symbols of {k} bits")
    out = np.empty(n, np.uint8 if k <= 8 else np.uint16)
    _unpack(d, k, out)
    return out
