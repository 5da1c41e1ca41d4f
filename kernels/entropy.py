"""Self-describing entropy-coded blobs for integer arrays: `encode` / `decode`, used by offloaders.

Layout (version 1; docs/kernels.md has the tables): magic "DC", version, a flags byte
(dtype, table form, coder), ndim and LEB128 dims, then for a non-empty array either a
Huffman body (the maximum code length, the used symbol range and its code lengths,
dense or sparse, the payload bit count and the payload) or a rANS body (precision and
state count, the frequencies' width, the used range and its frequencies, the stream),
and a CRC32 of everything before it. `encode` writes whichever body is smaller: rANS
codes fractional bits (within 0.1% of the entropy where Huffman is 2-4% over it on
peaked histograms), Huffman wins on tiny arrays, flat histograms and wide alphabets,
where its shorter table matters more.

Decoding trusts nothing: the CRC is checked first, every field is bounded by what the
blob can hold before anything is allocated (a Huffman symbol costs at least one bit and
a rANS stream is at least one byte per 64 symbols, so the element count is at most 64
times the payload bytes), and any failure is a `CorruptBlob`. A caller that knows what
it expects (shape, dtype, an element limit) says so: a blob that names anything else,
or is longer than `max_blob_size` of that array, is refused before a byte is copied or
a symbol decoded, so the blob cannot choose the work.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

from kernels import ans, bitpack, huffman

__all__ = [
    "ANS_SYMBOLS_PER_BYTE",
    "CODERS",
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

# flags bits 0-1: dtype code; bit 2: sparse table; bit 3: rANS body; bits 4-7 reserved (zero).
_DTYPES: tuple[np.dtype, ...] = (
    np.dtype(np.uint8),
    np.dtype(np.int8),
    np.dtype(np.uint16),
    np.dtype(np.int16),
)
_SPARSE = 0x04
_ANS = 0x08
# A rANS stream is padded (with zeros) to at least one byte per this many symbols, so
# that a blob's element count stays bounded by its length (1/8 bit per symbol at least).
ANS_SYMBOLS_PER_BYTE = 64
CODERS = ("auto", "huffman", "ans")
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


def _value_table(values: np.ndarray, width: int, head: bytes) -> tuple[int, bytes]:
    """(flag, bytes) for the used range's values (0 = unused) of `width` bits after
    `head`: dense or sparse, whichever is shorter (dense on a tie)."""
    used = np.flatnonzero(values)
    lo, hi = int(used[0]), int(used[-1])
    head = head + _varint(lo)
    dense = head + _varint(hi - lo + 1) + bitpack.pack(values[lo : hi + 1], width).tobytes()
    if used.size == hi - lo + 1 or used.size - 1 >= len(dense):
        return 0, dense  # no gaps, or each gap takes a byte at least: sparse cannot win
    gap_values = np.diff(used)
    gap_bytes = used.size - 1 + int(np.count_nonzero(gap_values >= 1 << 7))
    gap_bytes += int(np.count_nonzero(gap_values >= 1 << 14))  # gaps are below 2**16
    size = len(head) + len(_varint(used.size)) + gap_bytes
    if size + bitpack.packed_size(used.size, width) >= len(dense):
        return 0, dense
    gaps = b"".join(_varint(int(g)) for g in gap_values)
    sparse_values = bitpack.pack(values[used], width).tobytes()
    sparse = head + _varint(used.size) + gaps + sparse_values
    return (_SPARSE, sparse) if len(sparse) < len(dense) else (0, dense)


def _length_table(lengths: np.ndarray) -> tuple[int, bytes]:
    """(flag, bytes) of the Huffman code lengths, after their maximum."""
    max_len = int(lengths.max())
    return _value_table(lengths, max_len.bit_length(), bytes([max_len]))


def _freq_table(m: ans.Model, states: int) -> tuple[int, bytes]:
    """(flag, bytes) of a rANS model: precision and log2(states), the frequencies' width,
    then the frequencies."""
    width = int(m.freqs.max()).bit_length()
    head = bytes([m.precision | (states.bit_length() - 1) << 4, width])
    return _value_table(m.freqs.astype(np.uint16), width, head)


def _seal(buf: np.ndarray, start: int, end: int) -> bytes:
    """buf[start:end] and its CRC (written into buf[end:end + 4]) as one bytes object."""
    crc = zlib.crc32(buf[start:end].data)
    buf[end : end + _CRC] = np.frombuffer(struct.pack("<I", crc), np.uint8)
    return buf[start : end + _CRC].tobytes()


def _huffman_blob(head: bytearray, flags_at: int, u: np.ndarray, counts, lengths, table=None):
    flag, table = table or _length_table(lengths)
    head = bytearray(head)
    head[flags_at] |= flag
    nbits = int(huffman._encoded_bits(counts, lengths))
    head += table + _varint(nbits)
    nbytes = (nbits + 7) // 8
    # One buffer for header, payload (+8 bytes of encoder slack) and CRC: one copy out.
    h = len(head)
    buf = np.empty(h + nbytes + 8, np.uint8)
    buf[:h] = np.frombuffer(head, np.uint8)
    huffman.encode_with(u, lengths, nbits, buf[h:])
    return _seal(buf, 0, h + nbytes)


def _ans_blob(head: bytearray, flags_at: int, u: np.ndarray, m: ans.Model, states: int, table=None):
    flag, table = table or _freq_table(m, states)
    head = bytearray(head)
    head[flags_at] |= flag | _ANS
    head += table
    # The stream is written backwards to the end of [h, h + capacity): the header goes
    # right before wherever it starts, the padding and CRC after it: one copy out.
    h = len(head)
    cap = ans.stream_capacity(u.size, states)
    floor = -(-u.size // ANS_SYMBOLS_PER_BYTE)
    buf = np.empty(h + cap + floor + _CRC, np.uint8)
    # The kernels directly: the model is our own, made from these very symbols.
    start = int(ans._encode(u, ans._encode_table(m.freqs, m.precision), states, buf[: h + cap]))
    end = h + cap
    pad = floor - (end - start)
    if pad > 0:
        buf[end : end + pad] = 0
        end += pad
    buf[start - h : start] = np.frombuffer(head, np.uint8)
    return _seal(buf, start - h, end)


def _ans_size(head_len: int, table_len: int, payload_bits: float, n: int, states: int) -> int:
    """Estimated blob bytes of a rANS body: whole words, the states' flush, the padding."""
    words = 2 * -(-int(np.ceil(payload_bits)) // 16)
    floor = -(-n // ANS_SYMBOLS_PER_BYTE)
    return head_len + table_len + max(words + 4 * states, floor) + _CRC


def encode(symbols: np.ndarray, *, coder: str = "auto") -> bytes:
    """Entropy-code an integer array (uint8/int8/uint16/int16, any shape) into a blob.

    `coder="auto"` writes the smaller of the Huffman and rANS blobs (Huffman on a tie),
    so `max_blob_size` bounds it; "huffman" and "ans" force one (for tests and
    benchmarks: a forced rANS blob can exceed that bound, e.g. on flat histograms, and
    rANS needs at most 32768 distinct values)."""
    if coder not in CODERS:
        raise ValueError(f"coder must be one of {', '.join(CODERS)}, got {coder!r}")
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
    if not u.size:
        buf = np.empty(len(head) + _CRC, np.uint8)
        buf[: len(head)] = np.frombuffer(head, np.uint8)
        return _seal(buf, 0, len(head))
    counts = huffman._histogram(u, 256 if u.dtype == np.uint8 else 65536)
    if coder == "huffman":
        return _huffman_blob(head, flags_at, u, counts, huffman.code_lengths(counts))
    m = ans._model(counts)
    states = ans.states_for(u.size)
    if coder == "ans":
        if m is None:
            raise ValueError(f"rANS codes at most {1 << ans.MAX_PRECISION} distinct values")
        return _ans_blob(head, flags_at, u, m, states)
    lengths = huffman.code_lengths(counts)
    huff_table = _length_table(lengths)
    if m is not None:
        nbits = int(huffman._encoded_bits(counts, lengths))
        huff_size = len(head) + len(huff_table[1]) + len(_varint(nbits)) + (nbits + 7) // 8 + _CRC
        ans_table = _freq_table(m, states)
        bits = float(ans._estimate(counts, m.freqs, m.precision))
        guess = _ans_size(len(head), len(ans_table[1]), bits, u.size, states)
        # The estimate counts each state's whole flush, but the stream can be up to 2
        # bytes per state shorter (and a little more by rounding luck): near a tie, both
        # are encoded and the smaller kept, so a rANS blob is never the longer one.
        if guess - 2 * states - 4 - guess // 1000 < huff_size:
            blob = _ans_blob(head, flags_at, u, m, states, ans_table)
            if len(blob) < huff_size:
                return blob
    return _huffman_blob(head, flags_at, u, counts, lengths, huff_table)


# --------------------------------------------------------------------------- decode


def _parse_table(blob: bytes, pos: int, end: int, sparse: bool, alphabet: int, width: int):
    """(values over the alphabet, the listed values, position after the table) of a
    dense or sparse table of `width`-bit values; the table's own structure checked."""
    lo, pos = _read_varint(blob, pos, end)
    if lo >= alphabet:
        raise CorruptBlob("symbol range outside the alphabet")
    count, pos = _read_varint(blob, pos, end)
    if not 1 <= count <= alphabet - lo:
        raise CorruptBlob("symbol range outside the alphabet")
    table = np.zeros(alphabet, np.uint16)
    if sparse:
        if count - 1 > end - pos:  # each gap takes at least one byte
            raise CorruptBlob("truncated table")
        symbols = np.empty(count, np.int64)
        s = lo
        symbols[0] = s
        for i in range(1, count):
            gap, pos = _read_varint(blob, pos, end)
            s += gap
            if gap == 0 or s >= alphabet:
                raise CorruptBlob("sparse table out of order or range")
            symbols[i] = s
    else:
        symbols = None
    nbytes = bitpack.packed_size(count, width)
    if nbytes > end - pos:
        raise CorruptBlob("truncated table")
    values = bitpack.unpack(np.frombuffer(blob, np.uint8, nbytes, pos), width, count)
    pos += nbytes
    if symbols is None:
        table[lo : lo + count] = values
    else:
        if not values.all():
            raise CorruptBlob("sparse table lists an unused symbol")
        table[symbols] = values
    if values[0] == 0 or values[-1] == 0:
        raise CorruptBlob("table's symbol range does not start and end with used symbols")
    return table, values, pos


def _parse_lengths(blob: bytes, pos: int, end: int, sparse: bool, alphabet: int):
    """(lengths over the alphabet, max_len, min_len, position after the table)."""
    if pos >= end:
        raise CorruptBlob("truncated header")
    max_len = blob[pos]
    pos += 1
    if not 1 <= max_len <= huffman.MAX_LIMIT:
        raise CorruptBlob(f"max code length {max_len} outside 1..{huffman.MAX_LIMIT}")
    table, values, pos = _parse_table(blob, pos, end, sparse, alphabet, max_len.bit_length())
    lengths = table.astype(np.uint8)
    if int(values.max()) != max_len:
        raise CorruptBlob("code-length table disagrees with its header")
    used = int(np.count_nonzero(lengths))
    total = huffman.kraft_sum(lengths, max_len)
    complete = total == (1 << max_len)
    if not (complete and used >= 2) and not (used == 1 and max_len == 1):
        raise CorruptBlob("code lengths do not form a complete prefix code")
    min_len = int(lengths[lengths > 0].min())
    return lengths, max_len, min_len, pos


def _parse_freqs(blob: bytes, pos: int, end: int, sparse: bool, alphabet: int):
    """(model, states, position after the table) of a rANS body."""
    if end - pos < 2:
        raise CorruptBlob("truncated header")
    packed, width = blob[pos], blob[pos + 1]
    pos += 2
    precision, states = packed & 0x0F, 1 << ((packed >> 4) & 0x03)
    if packed & 0xC0 or states > 4 or not 1 <= precision <= ans.MAX_PRECISION:
        raise CorruptBlob(f"rANS precision and states byte {packed:#x} out of range")
    if not 1 <= width <= precision + 1:
        raise CorruptBlob(f"frequency width {width} outside 1..{precision + 1}")
    table, values, pos = _parse_table(blob, pos, end, sparse, alphabet, width)
    if int(values.max()).bit_length() != width:
        raise CorruptBlob("frequency table disagrees with its width")
    # Their sum (exactly 2**precision) is checked as the decoding table is filled.
    return ans.Model(table, precision), states, pos


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
    if flags & ~0x0F:
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


def _decode_huffman(blob: bytes, pos: int, end: int, sparse: bool, alphabet: int, n: int):
    lengths, max_len, min_len, pos = _parse_lengths(blob, pos, end, sparse, alphabet)
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
    return out


def _decode_ans(blob: bytes, pos: int, end: int, sparse: bool, alphabet: int, n: int):
    model, states, pos = _parse_freqs(blob, pos, end, sparse, alphabet)
    nbytes = end - pos
    if nbytes < 4 * states:
        raise CorruptBlob(f"rANS stream of {nbytes} bytes, shorter than its {states} states")
    # Bound the element count by the payload before allocating anything of size n.
    if n > ANS_SYMBOLS_PER_BYTE * nbytes:
        raise CorruptBlob(f"{n} symbols cannot take {nbytes} bytes")
    payload = np.frombuffer(blob, np.uint8, nbytes, pos)
    try:
        table = ans.decode_table(model, alphabet)
    except ValueError as exc:
        raise CorruptBlob(str(exc)) from None
    out = np.empty(n, table.symbols.dtype)
    used = ans.decode_with(payload, table, states, out)
    if used < 0:
        raise CorruptBlob("payload is not a rANS stream of its model and length")
    # Only the padding to one byte per ANS_SYMBOLS_PER_BYTE symbols may follow.
    if used < nbytes and (nbytes != -(-n // ANS_SYMBOLS_PER_BYTE) or payload[used:].any()):
        raise CorruptBlob(f"{nbytes - used} bytes after the rANS stream")
    return out


def _decode(blob: bytes, want_shape=None, want_code=None, max_symbols=None) -> np.ndarray:
    flags, dtype, shape, n, pos, end = _parse(blob)
    _check_expected(dtype, shape, n, want_shape, want_code, max_symbols)
    code = flags & 0x03
    if n == 0:
        if pos != end:
            raise CorruptBlob("trailing bytes after an empty array")
        if flags & (_SPARSE | _ANS):
            raise CorruptBlob("table or coder flags on an empty array")
        try:
            return np.empty(shape, dtype)
        except (ValueError, MemoryError) as exc:
            raise CorruptBlob(f"impossible shape {shape}") from exc
    alphabet = 256 if dtype.itemsize == 1 else 65536
    sparse = bool(flags & _SPARSE)
    if flags & _ANS:
        out = _decode_ans(blob, pos, end, sparse, alphabet, n)
    else:
        out = _decode_huffman(blob, pos, end, sparse, alphabet, n)
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
    and a fixed-length code of that many bits is always within its limit. `encode` writes
    a rANS blob only where it is shorter than the Huffman one, so this bounds both; for
    one level, the rANS blob of a single symbol (a constant array) is the bound."""
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
    huffman_bound = head + table + len(_varint(nbits)) + (nbits + 7) // 8
    if levels > 1:
        return huffman_bound
    # One symbol: precision 1, its frequency 2 in 2 bits, the states or the padding.
    stream = max(4 * ans.states_for(n), -(-n // ANS_SYMBOLS_PER_BYTE))
    ans_bound = head + 2 + len(_varint(alphabet - 1)) + 1 + 1 + stream
    return min(huffman_bound, ans_bound)


def empirical_entropy(symbols: np.ndarray) -> float:
    """Shannon entropy in bits per symbol of the array's own histogram (0 if empty)."""
    s = np.asarray(symbols).reshape(-1)
    if s.size == 0:
        return 0.0
    _, counts = np.unique(s, return_counts=True)
    p = counts / s.size
    return float(-(p * np.log2(p)).sum())
