"""The kernels that loop over data release the GIL (`nogil=True`): while one thread
entropy-codes a large array, the others (the edge agent's other clients) keep running."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from kernels import entropy, huffman, quantize

# A kernel that held the GIL would stall the ticking thread for a whole call; one that
# releases it, for the wrapper's short Python steps and the scheduler's noise only. The
# checks compare the two, so they hold on a fast or a loaded machine alike.
N = 1 << 27  # 128M symbols (128 MB): 0.1-0.3 s per encode, 0.3-1 s per decode here
TICK_S = 0.001
MIN_CALL_S = 0.04  # shorter calls prove nothing against scheduling noise


def skewed(n: int) -> np.ndarray:
    """Discrete-Laplace bytes (entropy about 5 bits), 1M drawn and repeated."""
    rng = np.random.default_rng(0)
    block = np.clip(np.round(rng.laplace(0, 6, 1 << 20)) + 128, 0, 255).astype(np.uint8)
    return np.tile(block, n >> 20)


def worst_stall(work, rounds: int = 2) -> tuple[float, float]:
    """(longest gap between the ticks of a thread sleeping TICK_S at a time, shortest
    kernel call) while `work` runs `rounds` times in another thread."""
    stop = threading.Event()
    gaps: list[float] = []
    calls: list[float] = []

    def ticker():
        last = time.perf_counter()
        while not stop.is_set():
            time.sleep(TICK_S)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    def worker():
        for _ in range(rounds):
            start = time.perf_counter()
            work()
            calls.append(time.perf_counter() - start)

    work()  # compiled and warm before timing
    tick = threading.Thread(target=ticker)
    tick.start()
    time.sleep(0.02)
    try:
        run = threading.Thread(target=worker)
        run.start()
        run.join()
    finally:
        stop.set()
        tick.join()
    return max(gaps), min(calls)


@pytest.fixture(scope="module")
def symbols():
    return skewed(N)


@pytest.fixture(scope="module")
def blob(symbols):
    return entropy.encode(symbols, coder="huffman")  # `_decode_args` parses Huffman


def check(work, rounds: int = 2, tries: int = 3) -> None:
    """Stalls under a third of a call: with the GIL held they would be a whole call, every
    time. A loaded machine can deschedule the ticker on its own, so up to `tries` tries."""
    seen = []
    for _ in range(tries):
        stall, call = worst_stall(work, rounds)
        assert call > MIN_CALL_S, f"a call of {call * 1e3:.0f} ms proves nothing: make N larger"
        if stall < call / 3:
            return
        seen.append(f"{stall * 1e3:.0f} ms in a {call * 1e3:.0f} ms call")
    raise AssertionError(f"another thread stalled: {'; '.join(seen)}")


def test_decode_lets_other_threads_run(blob, symbols):
    check(lambda: huffman.decode_with(*_decode_args(blob, symbols.size)), rounds=3)


def test_encode_kernels_let_other_threads_run(symbols):
    counts = huffman.histogram(symbols)
    lengths = huffman.code_lengths(counts)
    nbits = huffman.encoded_bits(counts, lengths)
    out = np.empty((nbits + 7) // 8 + 8, np.uint8)
    check(lambda: huffman.encode_with(symbols, lengths, nbits, out), rounds=3)
    check(lambda: huffman.histogram(symbols), rounds=3)


def test_quantizer_lets_other_threads_run():
    """The slowest quantizer (bisection over 200 centres); the others are the same kind
    of loop over arrays, each too fast per call to be timed this way."""
    x = np.tile(np.random.default_rng(1).normal(size=1 << 20).astype(np.float32), N >> 23)
    codebook = quantize.Codebook(np.linspace(-2, 2, 200))
    check(lambda: quantize.nearest_centre(x, codebook))


def test_whole_decode_and_encode_keep_stalls_short(blob, symbols):
    """The wrappers' own Python and numpy steps between kernels are short too."""
    check(lambda: entropy.decode(blob, shape=(N,), dtype=np.uint8))
    check(lambda: entropy.encode(symbols))


def _decode_args(blob: bytes, n: int):
    """(payload, tables, out) of a well-formed uint8 blob, parsed as `entropy.decode` does."""
    flags, _, _, _, pos, end = entropy._parse(blob)
    lengths, _, _, pos = entropy._parse_lengths(blob, pos, end, bool(flags & 0x04), 256)
    nbits, pos = entropy._read_varint(blob, pos, end)
    payload = np.frombuffer(blob, np.uint8, (nbits + 7) // 8, pos)
    return payload, huffman.decode_table(lengths), np.empty(n, np.uint8)
