"""Self-describing Huffman blobs for integer arrays: `encode` / `decode`, used by offloaders.

Layout (version 1; docs/kernels.md has the table): magic "DC", version, a flags byte
(dtype, code-length form), ndim and LEB128 dims, then for a non-empty array the maximum
code length, the used symbol range and its code lengths (dense or sparse, whichever is
shorter), the payload bit count, the payload, and a CRC32 of everything before it.

Decoding trusts nothing: the CRC is checked first, every field is bounded by what the
blob can hold before anything is allocated (a symbol costs at least one bit, so the
element count is at most the payload bits), and any failure is a `CorruptBlob`. A caller
that knows what it expects (shape, dtype, an element limit) says so: a blob that names
anything else, or is longer than `max_blob_size` of that array, is refused before a
byte is copied or a symbol decoded, so the blob cannot choose the work.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

from kernels import bitpack, huffman

__all__ = [
    "MAGIC",
    "VERSION",
    "CorruptBlob",
    "decode",
    "empirical_entropy",
    "encode",
    "max_blob_size",
]

MAGIC = b"DC"
VERSION = 1
MAX_NDIM = 64
_MAX_DIM = (1 << 63) - 1

# flags bits 0-1: dtype code; bit 2: sparse code lengths; bits 3-7 reserved (zero).
_DTYPES: tuple[np.dtype, ...] = (
    np.dtype(np.uint8),
    np.dtype(np.int8),
    np.dtype(np.uint16),
    np.dtype(np.int16),
)
_SPARSE = 0x04
_FIXED = len(MAGIC) + 3  # magic, version, flags, ndim
_CRC = 4


class CorruptBlob(ValueError):
    """The blob is truncated, corrupted or not one of ours."""


# --------------------------------------------------------------------------- varints


def _varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _read_varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    value = 0
    for i in range(9):
        if pos >= end:
            raise CorruptBlob("truncated header")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << (7 * i)
        if not b & 0x80:
            if value > _MAX_DIM:
                break
            return value, pos
    raise CorruptBlob("header integer out of range")


# --------------------------------------------------------------------------- encode


def _dtype_code(dt: np.dtype) -> int:
    for code, d in enumerate(_DTYPES):
        if dt.kind == d.kind and dt.itemsize == d.itemsize:
            return code
    raise TypeError(f"entropy.encode takes uint8, int8, uint16 or int16 arrays, got {dt}")


def _to_unsigned(a: np.ndarray, code: int) -> np.ndarray:
    """The symbols in unsigned form, in memory of their own: the kernels run without the
    GIL and size the payload from a histogram first, so a caller's thread changing its
    array meanwhile must not reach them (a copy costs 2% of an encode)."""
    flat = np.ascontiguousarray(a.reshape(-1), dtype=_DTYPES[code].newbyteorder("="))
    if code == 0 or code == 2:
        return flat.copy() if np.may_share_memory(flat, a) else flat
    # Offset binary: -128..127 -> 0..255 (resp. 16-bit), so the histogram stays dense.
    unsigned = np.dtype(np.uint8 if code == 1 else np.uint16)
    return flat.view(unsigned) ^ np.asarray(0x80 if code == 1 else 0x8000, unsigned)


def _length_table(lengths: np.ndarray) -> tuple[int, bytes]:
    """(flag, bytes) for the used range's code lengths: dense or sparse, whichever is shorter."""
    used = np.flatnonzero(lengths)
    lo, hi = int(used[0]), int(used[-1])
    max_len = int(lengths.max())
    width = max_len.bit_length()
    head = bytes([max_len]) + _varint(lo)
    dense = head + _varint(hi - lo + 1) + bitpack.pack(lengths[lo : hi + 1], width).tobytes()
    if used.size - 1 >= len(dense):  # each gap takes a byte at least: sparse cannot win
        return 0, dense
    gaps = b"".join(_varint(int(g)) for g in np.diff(used))
    sparse_lengths = bitpack.pack(lengths[used], width).tobytes()
    sparse = head + _varint(used.size) + gaps + sparse_lengths
    return (_SPARSE, sparse) if len(sparse) < len(dense) else (0, dense)


def encode(symbols: np.ndarray) -> bytes:
    """Huffman-code an integer array (uint8/int8/uint16/int16, any shape) into a blob."""
    a = np.asarray(symbols)
    code = _dtype_code(a.dtype)
    if a.ndim > MAX_NDIM:  # pragma: no cover - numpy's own limit is 64
        raise ValueError(f"at most {MAX_NDIM} dimensions")
    u = _to_unsigned(a, code)
    head = bytearray(MAGIC)
    head += bytes([VERSION])
    flags_at = len(head)
    head += bytes([code, a.ndim])
    for d in a.shape:
        head += _varint(d)
    nbytes = 0
    if u.size:
        counts = huffman._histogram(u, 256 if u.dtype == np.uint8 else 65536)
        lengths = huffman.code_lengths(counts)
        flag, table = _length_table(lengths)
        head[flags_at] |= flag
        nbits = int(huffman._encoded_bits(counts, lengths))
        head += table + _varint(nbits)
        nbytes = (nbits + 7) // 8
    # One buffer for header, payload (+8 bytes of encoder slack) and CRC: one copy out.
    h = len(head)
    buf = np.empty(h + nbytes + 8, np.uint8)
    buf[:h] = np.frombuffer(head, np.uint8)
    if u.size:
        huffman.encode_with(u, lengths, nbits, buf[h:])
    end = h + nbytes
    buf[end : end + _CRC] = np.frombuffer(struct.pack("<I", zlib.crc32(buf[:end].data)), np.uint8)
    return buf[: end + _CRC].tobytes()


# --------------------------------------------------------------------------- decode


def _parse_lengths(blob: bytes, pos: int, end: int, sparse: bool, alphabet: int):
    """(lengths over the alphabet, max_len, min_len, position after the table)."""
    if pos >= end:
        raise CorruptBlob("truncated header")
    max_len = blob[pos]
    pos += 1
    if not 1 <= max_len <= huffman.MAX_LIMIT:
        raise CorruptBlob(f"max code length {max_len} outside 1..{huffman.MAX_LIMIT}")
    width = max_len.bit_length()
    lo, pos = _read_varint(blob, pos, end)
    if lo >= alphabet:
        raise CorruptBlob("symbol range outside the alphabet")
    count, pos = _read_varint(blob, pos, end)
    if not 1 <= count <= alphabet - lo:
        raise CorruptBlob("symbol range outside the alphabet")
    lengths = np.zeros(alphabet, np.uint8)
    if sparse:
        if count - 1 > end - pos:  # each gap takes at least one byte
            raise CorruptBlob("truncated code-length table")
        symbols = np.empty(count, np.int64)
        s = lo
        symbols[0] = s
        for i in range(1, count):
            gap, pos = _read_varint(blob, pos, end)
            s += gap
            if gap == 0 or s >= alphabet:
                raise CorruptBlob("sparse code-length table out of order or range")
            symbols[i] = s
    else:
        symbols = None
    nbytes = bitpack.packed_size(count, width)
    if nbytes > end - pos:
        raise CorruptBlob("truncated code-length table")
    values = bitpack.unpack(np.frombuffer(blob, np.uint8, nbytes, pos), width, count)
    pos += nbytes
    if symbols is None:
        lengths[lo : lo + count] = values
    else:
        if not values.all():
            raise CorruptBlob("sparse code-length table lists an unused symbol")
        lengths[symbols] = values
    if int(values.max()) != max_len or values[0] == 0 or values[-1] == 0:
        raise CorruptBlob("code-length table disagrees with its header")
    used = int(np.count_nonzero(lengths))
    total = huffman.kraft_sum(lengths, max_len)
    complete = total == (1 << max_len)
    if not (complete and used >= 2) and not (used == 1 and max_len == 1):
        raise CorruptBlob("code lengths do not form a complete prefix code")
    min_len = int(lengths[lengths > 0].min())
    return lengths, max_len, min_len, pos


def _parse(blob: bytes):
    n_blob = len(blob)
    if n_blob < _FIXED + _CRC:
        raise CorruptBlob(f"blob of {n_blob} bytes is too short")
    if blob[:2] != MAGIC:
        raise CorruptBlob("bad magic: not an entropy blob")
    if blob[2] != VERSION:
        raise CorruptBlob(f"unsupported version {blob[2]}")
    end = n_blob - _CRC
    (crc,) = struct.unpack_from("<I", blob, end)
    if zlib.crc32(memoryview(blob)[:end]) != crc:
        raise CorruptBlob("checksum mismatch")
    flags, ndim = blob[3], blob[4]
    if flags & ~0x07:
        raise CorruptBlob(f"reserved flag bits set: {flags:#x}")
    if ndim > MAX_NDIM:
        raise CorruptBlob(f"{ndim} dimensions")
    dtype = _DTYPES[flags & 0x03]
    pos = _FIXED
    shape = []
    for _ in range(ndim):
        d, pos = _read_varint(blob, pos, end)
        shape.append(d)
    n = 1
    for d in shape:
        n *= d
    return flags, dtype, tuple(shape), n, pos, end


def _expected(shape, dtype) -> tuple[tuple[int, ...] | None, int | None]:
    """A caller's expectation normalised: (shape or None, dtype code or None)."""
    want_shape = None if shape is None else tuple(int(d) for d in shape)
    if want_shape is not None and (len(want_shape) > MAX_NDIM or min(want_shape, default=0) < 0):
        raise ValueError(f"expected shape {want_shape} is not an array's shape")
    return want_shape, None if dtype is None else _dtype_code(np.dtype(dtype))


def decode(
    blob: bytes | bytearray | memoryview,
    *,
    shape: tuple[int, ...] | None = None,
    dtype=None,
    max_symbols: int | None = None,
) -> np.ndarray:
    """The array that `encode` was given; CorruptBlob for anything else.

    `shape`, `dtype` and `max_symbols` are what the caller expects: a blob whose header
    names another shape or dtype, or more elements, is refused before anything of its
    size is allocated or decoded, and with both shape and dtype a blob longer than
    `max_blob_size` of them before it is even checksummed."""
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise TypeError(f"decode takes bytes, got {type(blob).__name__}")
    want_shape, want_code = _expected(shape, dtype)
    if want_shape is not None and dtype is not None:
        bound = max_blob_size(want_shape, dtype)
        if len(blob) > bound:
            raise CorruptBlob(
                f"blob of {len(blob)} bytes; an array of shape {want_shape} {np.dtype(dtype)} "
                f"takes at most {bound}"
            )
    try:
        return _decode(bytes(blob), want_shape, want_code, max_symbols)
    except CorruptBlob:
        raise
    except (ValueError, IndexError, OverflowError, MemoryError, struct.error) as exc:
        # Every field is checked explicitly; this only keeps the one-exception promise
        # should a check ever be missing.
        raise CorruptBlob(f"malformed blob: {exc}") from exc


def _check_expected(dtype, shape, n, want_shape, want_code, max_symbols) -> None:
    """The header against what the caller expects, before any allocation of size n."""
    code = _DTYPES.index(dtype)
    if want_code is not None and code != want_code:
        raise CorruptBlob(f"blob holds {dtype}, expected {_DTYPES[want_code]}")
    if want_shape is not None and shape != want_shape:
        raise CorruptBlob(f"blob holds shape {shape}, expected {want_shape}")
    if max_symbols is not None and n > max_symbols:
        raise CorruptBlob(f"blob holds {n} elements, at most {max_symbols} expected")


def _decode(blob: bytes, want_shape=None, want_code=None, max_symbols=None) -> np.ndarray:
    flags, dtype, shape, n, pos, end = _parse(blob)
    _check_expected(dtype, shape, n, want_shape, want_code, max_symbols)
    code = flags & 0x03
    if n == 0:
        if pos != end:
            raise CorruptBlob("trailing bytes after an empty array")
        try:
            return np.empty(shape, dtype)
        except (ValueError, MemoryError) as exc:
            raise CorruptBlob(f"impossible shape {shape}") from exc
    alphabet = 256 if dtype.itemsize == 1 else 65536
    lengths, max_len, min_len, pos = _parse_lengths(blob, pos, end, bool(flags & _SPARSE), alphabet)
    nbits, pos = _read_varint(blob, pos, end)
    nbytes = (nbits + 7) // 8
    if nbytes != end - pos:
        raise CorruptBlob(f"payload of {end - pos} bytes, header says {nbits} bits")
    # Bound the element count by the payload before allocating anything of size n.
    if not n * min_len <= nbits <= n * max_len:
        raise CorruptBlob(f"{n} symbols cannot take {nbits} bits")
    payload = np.frombuffer(blob, np.uint8, nbytes, pos)
    if nbits % 8 and payload[-1] & ((1 << (8 - nbits % 8)) - 1):
        raise CorruptBlob("nonzero padding bits")
    tables = huffman.decode_table(lengths)
    out = np.empty(n, np.uint8 if alphabet == 256 else np.uint16)
    used = huffman.decode_with(payload, tables, out)
    if used < 0:
        raise CorruptBlob("payload contains a bit pattern that is not a code")
    if used != nbits:
        raise CorruptBlob("payload does not decode to the stated symbol count")
    if code == 1:
        out ^= np.uint8(0x80)
        out = out.view(np.int8)
    elif code == 3:
        out ^= np.uint16(0x8000)
        out = out.view(np.int16)
    return out.reshape(shape)


# --------------------------------------------------------------------------- sizes


def max_blob_size(shape: tuple[int, ...], dtype, levels: int | None = None) -> int:
    """The longest blob `encode` can produce for an array of this shape and dtype whose
    values lie in at most `levels` consecutive integers (default: the whole dtype): the
    bound a receiver states for its payloads.

    Header and CRC as laid out; the dense length table of `levels` symbols at the widest
    length the code can use (the sparse one is written only when shorter); a payload of
    max(1, ceil(log2 levels)) bits per element, since the length-limited code is optimal
    and a fixed-length code of that many bits is always within its limit."""
    dt = np.dtype(dtype)
    alphabet = 256 if _DTYPES[_dtype_code(dt)].itemsize == 1 else 65536
    levels = alphabet if levels is None else int(levels)
    if not 1 <= levels <= alphabet:
        raise ValueError(f"levels must be in 1..{alphabet}, got {levels}")
    dims, _ = _expected(shape, None)
    assert dims is not None
    head = _FIXED + sum(len(_varint(d)) for d in dims) + _CRC
    n = 1
    for d in dims:
        n *= d
    if n == 0:
        return head
    longest = max(1, min(huffman.default_limit(levels), levels - 1))
    table = (
        1
        + len(_varint(alphabet - 1))
        + len(_varint(levels))
        + bitpack.packed_size(levels, longest.bit_length())
    )
    nbits = n * max(1, (levels - 1).bit_length())
    return head + table + len(_varint(nbits)) + (nbits + 7) // 8


def empirical_entropy(symbols: np.ndarray) -> float:
    """Shannon entropy in bits per symbol of the array's own histogram (0 if empty)."""
    s = np.asarray(symbols).reshape(-1)
    if s.size == 0:
        return 0.0
    _, counts = np.unique(s, return_counts=True)
    p = counts / s.size
    return float(-(p * np.log2(p)).sum())
