"""What the split-computing offloaders share: running a model in two halves, profiling
its stages on the host that runs them, predicting a split's latency, and the two
payload formats for features (float32 as they are, or k-bit codes entropy coded).

Split point k means stages[:k] on the device and stages[k:] on the edge; k = 0 sends
the raw input, k = len(stages) runs everything locally. Payloads carry their split
(and bits), and the edge checks every field against the plugin's own stage shapes
before it allocates or computes anything: a payload is untrusted network input. Its
length is bounded by `max_float_payload` / `max_coded_payload` of the splits the edge
accepts, and the features it yields are finite and within `FEATURE_BOUND`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import torch

from testbed.models import predictions
from testbed.models.plugin_api import check_plugin
from testbed.offloaders.base import dilated, to_edge, to_host

_SHAPES: dict[str, list[tuple[int, ...]]] = {}


def stage_shapes(plugin) -> list[tuple[int, ...]]:
    """Output shape of every stage for one sample (cached per plugin name)."""
    if plugin.name not in _SHAPES:
        _SHAPES[plugin.name] = check_plugin(plugin)
    return _SHAPES[plugin.name]


def feature_shape(plugin, split: int) -> tuple[int, ...]:
    return tuple(plugin.input_spec.shape) if split == 0 else stage_shapes(plugin)[split - 1]


@torch.inference_mode()
def run_head(plugin, model, sample: np.ndarray, split: int) -> np.ndarray:
    """stages[:split] on one raw sample -> float32 features without the batch axis."""
    return to_host(model[:split](to_edge(plugin.to_tensor(sample[None]))))[0].numpy()


@torch.inference_mode()
def run_tail(plugin, model, features: np.ndarray, split: int):
    logits = model[split:](to_edge(np.ascontiguousarray(features)[None]))
    return predictions.predict(plugin, to_host(logits))[0]


@torch.inference_mode()
def profile_stages(plugin, model, repeats: int = 3) -> list[float]:
    """Median milliseconds of each stage for one sample on this host, after one warm-up
    pass. The input is a fixed pseudo-random sample: a CNN's cost does not depend on
    the values, and this host may not have the data."""
    spec = plugin.input_spec
    rng = np.random.default_rng(0)
    sample = rng.uniform(spec.low, spec.high, size=(1, *spec.shape)).astype(spec.dtype)
    x = to_edge(plugin.to_tensor(sample))  # where the model is: the edge's GPU, profiled there
    runs = []
    for _ in range(repeats + 1):
        times, h = [], x
        for stage in model:
            with dilated() as took:  # at the device's speed, as its requests run
                h = stage(h)
            times.append(took.ms)
        runs.append(times)
    return [float(np.median(column)) for column in zip(*runs[1:], strict=True)]


@dataclass(frozen=True)
class Candidate:
    """One way to run a request: split point and what crosses the wire."""

    split: int
    bytes_up: float  # expected payload bytes (0 where nothing is sent)
    bits: int = 32

    def predict_ms(self, device_ms: list[float], edge_ms: list[float], link, prior_mbps) -> float:
        """Neurosurgeon's model: device stages + upload + edge stages (the small reply's
        time is the same for every split and left out)."""
        device = sum(device_ms[: self.split])
        if self.split == len(device_ms):
            return device
        return device + link.transfer_ms(self.bytes_up, prior_mbps) + sum(edge_ms[self.split :])


# ------------------------------------------------------------------------------ payloads

_FLOAT_HEADER = struct.Struct("<B")  # split
_CODED_HEADER = struct.Struct("<BBff")  # split, bits, scale, offset
MAX_BITS = 8  # coded features: 1..8 bits, uint8 codes

# The largest feature magnitude an edge accepts. Trained networks' activations stay far
# below it (fashion_cnn's and mobilenet_v2's below 1e3), and below it the tail's float32
# arithmetic cannot overflow: a product of two features summed over 1e8 terms (a matrix
# product, a variance) stays under 1e38, float32's largest being 3.4e38. Beyond it, or
# NaN/Inf, a tail answers garbage (class 0) instead of an error.
FEATURE_BOUND = 1e15


def _raw_bytes(plugin) -> int:
    return int(np.prod(plugin.input_spec.shape)) * np.dtype(plugin.input_spec.dtype).itemsize


def max_float_payload(plugin, splits) -> int:
    """The longest `pack_features` payload at any of these splits (exact: it has one size
    per split)."""
    sizes = [
        _raw_bytes(plugin) if split == 0 else 4 * int(np.prod(feature_shape(plugin, split)))
        for split in splits
    ]
    return _FLOAT_HEADER.size + max(sizes)


def max_coded_payload(plugin, splits) -> int:
    """The longest `pack_coded` payload at any of these splits: its header and the
    entropy blob of the worst case, MAX_BITS-bit codes spread evenly."""
    from kernels import entropy

    return _CODED_HEADER.size + max(
        entropy.max_blob_size(feature_shape(plugin, split), np.uint8, 1 << MAX_BITS)
        for split in splits
    )


def check_features(values: np.ndarray, what: str) -> np.ndarray:
    """Features from the network: finite and within FEATURE_BOUND, else ValueError."""
    with np.errstate(invalid="ignore"):
        if not np.isfinite(values).all():
            raise ValueError(f"{what} holds NaN or infinite values")
        if values.size and float(np.abs(values).max()) > FEATURE_BOUND:
            raise ValueError(f"{what} holds values beyond {FEATURE_BOUND:g}")
    return values


def pack_features(split: int, features: np.ndarray) -> bytes:
    """Split 0: the raw input in its own dtype; otherwise float32 features."""
    return _FLOAT_HEADER.pack(split) + np.ascontiguousarray(features).tobytes()


def unpack_features(plugin, payload: bytes, allowed: set[int]) -> tuple[int, np.ndarray]:
    """(split, features as float32 ready for stages[split:], raw input at split 0)."""
    if len(payload) < _FLOAT_HEADER.size:
        raise ValueError("features payload shorter than its header")
    (split,) = _FLOAT_HEADER.unpack_from(payload)
    if split not in allowed:
        raise ValueError(
            f"features payload at split {split}; this offloader uses {sorted(allowed)}"
        )
    shape = feature_shape(plugin, split)
    dtype = np.dtype(plugin.input_spec.dtype) if split == 0 else np.dtype(np.float32)
    body = memoryview(payload)[_FLOAT_HEADER.size :]
    if len(body) != int(np.prod(shape)) * dtype.itemsize:
        raise ValueError(
            f"features payload of {len(body)} bytes at split {split}, expected "
            f"{int(np.prod(shape)) * dtype.itemsize}"
        )
    values = np.frombuffer(body, dtype=dtype).reshape(shape).copy()  # torch wants it writable
    if split == 0:
        return 0, plugin.to_tensor(values[None])[0].numpy()
    return split, check_features(values, f"features payload at split {split}")


def pack_coded(split: int, bits: int, features: np.ndarray) -> bytes:
    """k-bit uniform codes of the features (per-tensor min/max), Huffman coded."""
    from kernels import entropy, quantize

    scale, offset = quantize.uniform_params(features, bits)
    codes = quantize.quantize_uniform(features, bits, scale, offset)
    return _CODED_HEADER.pack(split, bits, float(scale), float(offset)) + entropy.encode(codes)


def unpack_coded(plugin, payload: bytes, allowed: set[int]) -> tuple[int, int, np.ndarray]:
    """(split, bits, dequantized float32 features)."""
    from kernels import entropy, quantize

    if len(payload) < _CODED_HEADER.size:
        raise ValueError("coded payload shorter than its header")
    split, bits, scale, offset = _CODED_HEADER.unpack_from(payload)
    if split not in allowed:
        raise ValueError(f"coded payload at split {split}; this offloader uses {sorted(allowed)}")
    if not 1 <= bits <= MAX_BITS or not (np.isfinite(scale) and np.isfinite(offset) and scale > 0):
        raise ValueError(f"coded payload with bits {bits}, scale {scale}, offset {offset}")
    top = offset + scale * ((1 << bits) - 1)  # float64: the dequantized range's far end
    if max(abs(offset), abs(top)) > FEATURE_BOUND:
        raise ValueError(
            f"coded payload with scale {scale:g}, offset {offset:g}: its values reach "
            f"{top:g}, beyond {FEATURE_BOUND:g}"
        )
    shape = feature_shape(plugin, split)
    try:
        codes = entropy.decode(
            memoryview(payload)[_CODED_HEADER.size :], shape=shape, dtype=np.uint8
        )
    except entropy.CorruptBlob as exc:
        raise ValueError(f"coded payload: {exc}") from None
    if codes.size and int(codes.max()) >= 1 << bits:
        raise ValueError(f"coded payload has a code above {bits} bits")
    return split, bits, quantize.dequantize_uniform(codes, scale, offset)
