"""Uniform k-bit quantization and nearest-centre (codebook) quantization.

Uniform: q = clip(floor((x - offset) * (1 / scale) + 0.5), 0, 2**k - 1), all in float32
(NaN maps to 0), and x' = q * scale + offset. The reciprocal is taken once in float32
so the numpy reference can repeat every rounding step bit for bit.

Codebook: DeepCOD's soft-to-hard quantizer at inference picks the nearest centre. The
decision boundaries are the float64 midpoints of the sorted distinct centres; a value
on a boundary goes to the lower centre, NaN to the lowest, and duplicate centres to
their first index. The kernel compares against float32 thresholds equivalent to those midpoints
(see `Codebook`), so it agrees with the float64 reference on every input.
"""

from __future__ import annotations

import warnings

import numpy as np
from numba import njit

__all__ = [
    "Codebook",
    "centre_values",
    "dequantize_uniform",
    "nearest_centre",
    "quantize_uniform",
    "uniform_params",
]


# --------------------------------------------------------------------------- uniform


@njit(cache=True, nogil=True)
def _quantize_tensor(x, inv_scale, offset, qmax, out):
    half = np.float32(0.5)
    for i in range(x.size):
        v = np.floor((x[i] - offset) * inv_scale + half)
        if v >= 0:
            if v > qmax:
                v = qmax
        else:
            v = np.float32(0.0)
        out[i] = v


@njit(cache=True, nogil=True)
def _quantize_channels(x, inv_scale, offset, qmax, out):
    """x and out are (outer, channels, inner); inner == 1 is the channels-last case."""
    half = np.float32(0.5)
    n0, nc, n2 = x.shape
    for a in range(n0):
        if n2 == 1:
            for c in range(nc):
                v = np.floor((x[a, c, 0] - offset[c]) * inv_scale[c] + half)
                if v >= 0:
                    if v > qmax:
                        v = qmax
                else:
                    v = np.float32(0.0)
                out[a, c, 0] = v
        else:
            for c in range(nc):
                o = offset[c]
                s = inv_scale[c]
                for b in range(n2):
                    v = np.floor((x[a, c, b] - o) * s + half)
                    if v >= 0:
                        if v > qmax:
                            v = qmax
                    else:
                        v = np.float32(0.0)
                    out[a, c, b] = v


@njit(cache=True, nogil=True)
def _dequantize_tensor(q, scale, offset, out):
    for i in range(q.size):
        out[i] = np.float32(q[i]) * scale + offset


@njit(cache=True, nogil=True)
def _dequantize_channels(q, scale, offset, out):
    n0, nc, n2 = q.shape
    for a in range(n0):
        for c in range(nc):
            s = scale[c]
            o = offset[c]
            for b in range(n2):
                out[a, c, b] = np.float32(q[a, c, b]) * s + o


def _check_bits(bits: int) -> int:
    bits = int(bits)
    if not 1 <= bits <= 16:
        raise ValueError(f"bits must be in 1..16, got {bits}")
    return bits


def _split(shape: tuple[int, ...], axis: int) -> tuple[int, int, int]:
    axis = axis % len(shape) if shape else 0
    outer = int(np.prod(shape[:axis], dtype=np.int64))
    inner = int(np.prod(shape[axis + 1 :], dtype=np.int64))
    return outer, shape[axis], inner


def _channel_params(scale, offset, channels: int) -> tuple[np.ndarray, np.ndarray]:
    s = np.ascontiguousarray(scale, dtype=np.float32).reshape(-1)
    o = np.ascontiguousarray(offset, dtype=np.float32).reshape(-1)
    if s.size != channels or o.size != channels:
        raise ValueError(f"need {channels} scales and offsets, got {s.size} and {o.size}")
    return s, o


_TINY = np.finfo(np.float32).tiny


def _inv(scale, offset):
    s = np.asarray(scale, dtype=np.float32)
    # Below the smallest normal float32 the reciprocal overflows to inf.
    if not np.all(np.isfinite(s) & (s >= _TINY)):
        raise ValueError("scales must be finite and at least the smallest normal float32")
    if not np.all(np.isfinite(np.asarray(offset, dtype=np.float32))):
        raise ValueError("offsets must be finite")
    return np.float32(1.0) / s


def uniform_params(x: np.ndarray, bits: int, axis: int | None = None):
    """(scale, offset) mapping [min, max] onto 0..2**bits-1, per tensor or along `axis`.

    A constant (or empty) slice gets scale 1 so that dequantization stays exact.
    """
    bits = _check_bits(bits)
    a = np.asarray(x, dtype=np.float32)
    qmax = (1 << bits) - 1
    rows = a.reshape(1, a.size) if axis is None else np.moveaxis(a, axis, 0)
    moved = rows.reshape(rows.shape[0], rows[0].size if rows.shape[0] else 0)
    if moved.shape[1] == 0:
        lo = hi = np.zeros(moved.shape[0], np.float64)
    else:
        with warnings.catch_warnings():  # all-NaN slices are handled below
            warnings.simplefilter("ignore", RuntimeWarning)
            lo = np.nanmin(moved, axis=1).astype(np.float64)
            hi = np.nanmax(moved, axis=1).astype(np.float64)
    with np.errstate(all="ignore"):
        scale = ((hi - lo) / qmax).astype(np.float32)  # float64 difference: no overflow
    scale = np.where(np.isfinite(scale) & (scale >= _TINY), scale, np.float32(1))
    lo = np.where(np.isfinite(lo), lo, 0).astype(np.float32)
    if axis is None:
        return np.float32(scale[0]), np.float32(lo[0])
    return scale.astype(np.float32), lo


def quantize_uniform(x: np.ndarray, bits: int, scale, offset, axis: int | None = None):
    """k-bit codes (uint8 for bits <= 8, else uint16) of float32 x, same shape.

    With `axis`, scale and offset are 1-D arrays with one entry per channel of that axis.
    """
    bits = _check_bits(bits)
    a = np.asarray(x, dtype=np.float32, order="C")
    out = np.empty(a.shape, np.uint8 if bits <= 8 else np.uint16)
    qmax = np.float32((1 << bits) - 1)
    if axis is None:
        inv = _inv(scale, offset)
        if inv.ndim:
            raise ValueError("per-tensor quantization takes scalar scale and offset")
        _quantize_tensor(a.reshape(-1), inv[()], np.float32(offset), qmax, out.reshape(-1))
        return out
    if a.ndim == 0:
        raise ValueError("per-channel quantization needs an array with that axis")
    shape3 = _split(a.shape, axis)
    s, o = _channel_params(scale, offset, shape3[1])
    _quantize_channels(a.reshape(shape3), _inv(s, o), o, qmax, out.reshape(shape3))
    return out


def dequantize_uniform(q: np.ndarray, scale, offset, axis: int | None = None) -> np.ndarray:
    """float32 values q * scale + offset; the inverse of `quantize_uniform` up to rounding."""
    c = np.asarray(q)
    if c.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"codes must be uint8 or uint16, got {c.dtype}")
    c = np.asarray(c, order="C")
    out = np.empty(c.shape, np.float32)
    if axis is None:
        _dequantize_tensor(c.reshape(-1), np.float32(scale), np.float32(offset), out.reshape(-1))
        return out
    if c.ndim == 0:
        raise ValueError("per-channel dequantization needs an array with that axis")
    shape3 = _split(c.shape, axis)
    s, o = _channel_params(scale, offset, shape3[1])
    _dequantize_channels(c.reshape(shape3), s, o, out.reshape(shape3))
    return out


# --------------------------------------------------------------------------- codebook

_BLOCK = 2048


@njit(cache=True, nogil=True)
def _nearest_linear(x, thresholds, order, out):
    """Few centres: count the thresholds below each value, one threshold at a time over a
    block of values, so the inner loop is a branch-free vectorised compare-and-add."""
    n = x.size
    identity = True
    for k in range(order.size):
        if order[k] != k:
            identity = False
    one = np.uint8(1)
    zero = np.uint8(0)
    for start in range(0, n, _BLOCK):
        m = min(_BLOCK, n - start)
        # Zero-based loops over slices vectorise; offset indices (start + i) do not.
        xs = x[start : start + m]
        o = out[start : start + m]
        for i in range(m):
            o[i] = 0
        for j in range(thresholds.size):
            t = thresholds[j]
            for i in range(m):
                o[i] += one if xs[i] > t else zero
        if not identity:
            for i in range(m):
                o[i] = order[o[i]]


@njit(cache=True, nogil=True)
def _nearest_bisect(x, thresholds, order, out):
    nm = thresholds.size
    for i in range(x.size):
        v = x[i]
        lo = 0
        hi = nm
        while lo < hi:
            mid = (lo + hi) >> 1
            if thresholds[mid] < v:
                lo = mid + 1
            else:
                hi = mid
        out[i] = order[lo]


@njit(cache=True, nogil=True)
def _centre_values(idx, values, out):
    """Return the position of the first index outside the codebook, or -1."""
    k = values.size
    for i in range(idx.size):
        j = idx[i]
        if j >= k:
            return i
        out[i] = values[j]
    return -1


class Codebook:
    """Sorted view of a 1-D codebook (1..256 finite centres, any order) for quantizing.

    Build it once per layer: sorting and the midpoints are then off the per-call path.
    """

    def __init__(self, centres) -> None:
        c = np.asarray(centres, dtype=np.float32).reshape(-1)
        if not 1 <= c.size <= 256:
            raise ValueError(f"a codebook has 1..256 centres, got {c.size}")
        if not np.all(np.isfinite(c)):
            raise ValueError("codebook centres must be finite")
        self.centres = np.ascontiguousarray(c)
        order = np.argsort(c, kind="stable")
        s = c[order].astype(np.float64)
        # Duplicates: keep the first (lowest original index) of each run of equal values.
        keep = np.ones(s.size, bool)
        keep[1:] = s[1:] != s[:-1]
        self.sorted_values = s[keep]
        self.order = np.ascontiguousarray(order[keep].astype(np.uint8))
        self.mids = (self.sorted_values[:-1] + self.sorted_values[1:]) * 0.5
        # For float32 x, x > mid (float64) exactly when x > the largest float32 <= mid,
        # so float32 thresholds give the same decisions at twice the SIMD width.
        t = self.mids.astype(np.float32)
        t = np.where(t > self.mids, np.nextafter(t, np.float32(-np.inf)), t)
        self.thresholds = np.ascontiguousarray(t, dtype=np.float32)


def _codebook(centres) -> Codebook:
    return centres if isinstance(centres, Codebook) else Codebook(centres)


def nearest_centre(x: np.ndarray, centres) -> np.ndarray:
    """uint8 index (into the codebook as given) of the nearest centre, same shape as x."""
    cb = _codebook(centres)
    a = np.asarray(x, dtype=np.float32, order="C")
    out = np.empty(a.shape, np.uint8)
    flat_in, flat_out = a.reshape(-1), out.reshape(-1)
    if cb.thresholds.size <= 16:
        _nearest_linear(flat_in, cb.thresholds, cb.order, flat_out)
    else:
        _nearest_bisect(flat_in, cb.thresholds, cb.order, flat_out)
    return out


def centre_values(indices: np.ndarray, centres) -> np.ndarray:
    """float32 centre per index (the inverse of `nearest_centre`); ValueError if out of range."""
    cb = _codebook(centres)
    idx = np.asarray(indices)
    if idx.dtype != np.uint8:
        raise TypeError(f"indices must be uint8, got {idx.dtype}")
    idx = np.asarray(idx, order="C")
    out = np.empty(idx.shape, np.float32)
    bad = _centre_values(idx.reshape(-1), cb.centres, out.reshape(-1))
    if bad >= 0:
        raise ValueError(
            f"index {int(idx.reshape(-1)[bad])} outside a codebook of {cb.centres.size}"
        )
    return out
