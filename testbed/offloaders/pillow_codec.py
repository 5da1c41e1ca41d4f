"""What the offloaders that send Pillow-coded images share (`jpeg`/`webp`, `deepdecision`,
`feature_png`/`feature_jpeg`), so that each check is written once: the qualities `auto`
tries, the codec library and input checks at construction, what their calibrations
depend on, and the first checks of an untrusted payload on the edge.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import PIL
from PIL import Image, features

from testbed.errors import EnvironmentMissing, PluginError

# the qualities "auto" tries, cheapest first
LADDER = tuple(range(5, 101, 5))

# Bytes allowed for a coded image's headers: JPEG's optimized Huffman tables, quantization
# tables and markers, WebP's and PNG's chunks (q100 JPEG of a 1-7 pixel image: 234-290).
HEADROOM = 2048


def max_coded_size(format: str, channels: int, height: int, width: int) -> int:
    """The longest payload a device's `format` image of this size may be: the edge refuses
    a longer one before Pillow reads a byte of it.

    JPEG and WebP: 2 bytes per pixel value, on the pixels padded to the codecs' 16x16
    blocks, plus HEADROOM. Measured at quality 100 (Pillow 11, the offloaders' options),
    uniform and binary noise, the worst content, reach at most 1.72 bytes per value (JPEG,
    28x28 grayscale, headers included) and 1.36 (WebP); photos a third of that. PNG (the
    feature tiles, grayscale): deflate's stored blocks, the worst case, add 5 bytes per
    64 KiB to the filtered rows (one filter byte each), PNG 12 per chunk."""
    if format == "PNG":
        rows = height * (width * channels + 1)
        return rows + rows // 256 + HEADROOM
    padded = (-(-height // 16) * 16) * (-(-width // 16) * 16)
    return 2 * channels * padded + HEADROOM


def check_size(what: str, payload: bytes, limit: int) -> None:
    """ValueError for a payload longer than `limit`: refused before any parsing."""
    if len(payload) > limit:
        raise ValueError(f"{what} of {len(payload)} bytes, at most {limit}")


def is_quality(value: Any) -> bool:
    """A quality parameter: "auto" or an integer 1-100."""
    if value == "auto":
        return True
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 100


def check_codec(name: str, format: str, feature: str) -> None:
    """Pillow wheels carry the codecs; a Pillow built without this one is an environment
    to fix, said before any request."""
    if not features.check(feature):
        raise EnvironmentMissing(
            f"{name}: this Pillow ({PIL.__version__}) was built without "
            f"{format} support; install a Pillow wheel from PyPI"
        )


def image_input(name: str, plugin, format: str, max_side: int) -> tuple[int, int, int]:
    """The plugin's input as (channels, height, width) of an image `format` can hold;
    a PluginError for any other input."""
    spec = plugin.input_spec
    if spec.dtype != "uint8" or len(spec.shape) != 3 or spec.shape[0] not in (1, 3):
        raise PluginError(
            f"{name}: plugin {plugin.name!r} takes {spec.describe()}; {name} "
            f"needs an image: uint8 of shape (1, H, W) grayscale or (3, H, W) RGB"
        )
    channels, height, width = spec.shape
    if not (1 <= height <= max_side and 1 <= width <= max_side):
        raise PluginError(
            f"{name}: plugin {plugin.name!r} images are {width}x{height}; "
            f"{format} holds at most {max_side} pixels a side"
        )
    return channels, height, width


def calibration_identity(feature: str, save_options: dict[str, Any]) -> str:
    """What a codec's calibrated scores depend on besides its options: the codec library's
    version as much as the fixed encoder settings (part of the calibration cache key)."""
    return (
        f"Pillow {PIL.__version__} {feature} {features.version(feature)} "
        f"{sorted(save_options.items())}"
    )


def to_image(sample: np.ndarray) -> Image.Image:
    """uint8 pixels (1, H, W) grayscale or (3, H, W) RGB -> a Pillow image."""
    pixels = np.ascontiguousarray(sample, dtype=np.uint8)
    return Image.fromarray(pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0))


def open_image(what: str, payload: bytes, format: str, limit: int) -> Image.Image:
    """An untrusted payload opened (header read, no pixel decoded) as an image of
    `format`, the only decoder tried; ValueError for an empty payload, one longer than
    `limit` (before Pillow sees it) or anything else."""
    if not payload:
        raise ValueError(f"{what} is empty")
    check_size(what, payload, limit)
    try:
        image = Image.open(io.BytesIO(payload), formats=[format])
    except Exception as exc:  # Pillow raises many kinds for foreign or damaged data
        raise ValueError(
            f"{what} of {len(payload)} bytes is not a {format} image ({type(exc).__name__}: {exc})"
        ) from None
    if image.format != format:
        image.close()
        raise ValueError(f"{what} is {image.format}, expected {format}")
    return image


def undecodable(what: str, payload: bytes, exc: Exception) -> ValueError:
    """A payload whose header passed but whose pixels Pillow cannot decode."""
    return ValueError(
        f"{what} of {len(payload)} bytes does not decode ({type(exc).__name__}: {exc})"
    )


def planes(pixels: np.ndarray, shape: tuple[int, int, int], what: str) -> np.ndarray:
    """Decoded pixels (H, W) or (H, W, 3) -> uint8 (C, H, W) of `shape`; the checks on
    the header before decoding make this hold, checked once more."""
    pixels = pixels[None] if shape[0] == 1 else pixels.transpose(2, 0, 1)
    if pixels.shape != shape or pixels.dtype != np.uint8:
        raise ValueError(f"{what} decoded to {pixels.shape} {pixels.dtype}")
    return pixels
