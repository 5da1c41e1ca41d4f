"""Compile (or load from the on-disk cache) every kernel before the first real request.

Numba compiles on first call, once per argument-type signature; an agent that skips
this pays seconds of compilation inside its first measured request.
"""

from __future__ import annotations

import time

import numpy as np

__all__ = ["warmup"]


def warmup() -> float:
    """Run every kernel on tiny inputs of each dtype the wrappers use; return the seconds."""
    start = time.perf_counter()
    from kernels import bitpack, entropy, huffman, quantize

    x = np.linspace(-1.0, 1.0, 64, dtype=np.float32).reshape(2, 4, 8)
    for bits in (4, 12):
        scale, offset = quantize.uniform_params(x, bits)
        quantize.dequantize_uniform(
            quantize.quantize_uniform(x, bits, scale, offset), scale, offset
        )
        scale, offset = quantize.uniform_params(x, bits, axis=1)
        q = quantize.quantize_uniform(x, bits, scale, offset, axis=1)
        quantize.dequantize_uniform(q, scale, offset, axis=1)
    for k in (8, 32):
        centres = np.linspace(-1, 1, k, dtype=np.float32)
        quantize.centre_values(quantize.nearest_centre(x, centres), centres)
    for dtype in (np.uint8, np.int8, np.uint16, np.int16):
        a = (np.arange(40) % 7).astype(dtype)
        entropy.decode(entropy.encode(a))
        entropy.decode(entropy.encode(a, coder="ans"))  # the choice may not take it here
        entropy.decode(entropy.encode(a[:1]))
    for dtype, k in ((np.uint8, 3), (np.uint16, 12)):
        v = (np.arange(20) % 5).astype(dtype)
        bitpack.unpack(bitpack.pack(v, k), k, v.size)
        counts = huffman.histogram(v)
        lengths = huffman.code_lengths(counts)
        payload, _ = huffman.encode(v, lengths)
        huffman.decode(payload.tobytes(), lengths, v.size)
    return time.perf_counter() - start


if __name__ == "__main__":
    print(f"{warmup():.3f}")
