"""Offline figures for the README: `python -m plugins.mtcnn_faces.evaluate [--json FILE]`.

The reference is the unmodified detector on the unmodified test frames. Each condition
degrades every frame, runs the same detector on it, and reports detection agreement with
the reference (metric.py): JPEG at qualities 90, 50, 20 and 10 (Pillow, with the `jpeg`
offloader's options: optimised Huffman tables, 4:2:0 chroma), and the frame downscaled
to 0.5x and 0.25x and scaled back up (bicubic both ways), as an edge would receive a
low-resolution upload. Also the detector's time per frame on one thread, and how many
of the LFW faces pasted into the crowd frames the reference finds (a detection whose
centre lies in a pasted patch, one detection per patch).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np

JPEG_QUALITIES = (90, 50, 20, 10)
DOWNSCALES = (0.5, 0.25)
JPEG_OPTIONS = {"optimize": True, "progressive": False, "subsampling": "4:2:0"}


def jpeg(frame: np.ndarray, quality: int) -> tuple[np.ndarray, int]:
    """(3, H, W) uint8 -> the frame after a JPEG round trip, and the payload size."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(frame.transpose(1, 2, 0)).save(
        buffer, format="JPEG", quality=quality, **JPEG_OPTIONS
    )
    with Image.open(io.BytesIO(buffer.getvalue())) as decoded:
        pixels = np.asarray(decoded.convert("RGB"), dtype=np.uint8)
    return pixels.transpose(2, 0, 1), buffer.tell()


def downscaled(frame: np.ndarray, factor: float = 0.5) -> tuple[np.ndarray, int]:
    """(3, H, W) uint8 -> scaled by `factor` and back (bicubic), and the small one's bytes."""
    from PIL import Image

    image = Image.fromarray(frame.transpose(1, 2, 0))
    w, h = image.size
    small = image.resize((round(w * factor), round(h * factor)), Image.Resampling.BICUBIC)
    back = small.resize((w, h), Image.Resampling.BICUBIC)
    return np.asarray(back, dtype=np.uint8).transpose(2, 0, 1), small.width * small.height * 3


def detect_all(model, frames: np.ndarray) -> tuple[list[np.ndarray], list[float]]:
    """Detections (N_i, 5) and seconds per frame."""
    import torch

    boxes, seconds = [], []
    for frame in frames:
        started = time.perf_counter()
        found = model.detect(torch.from_numpy(frame).float())
        seconds.append(time.perf_counter() - started)
        boxes.append(found.numpy())
    return boxes, seconds


def placed_found(reference: list[np.ndarray], info: list[dict]) -> dict:
    """Pasted LFW faces (crowd frames) that hold the centre of a reference detection."""
    placed = found = 0
    for boxes, meta in zip(reference, info, strict=True):
        patches = meta.get("face_boxes", [])
        placed += len(patches)
        centres = [((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for b in boxes]
        found += sum(
            any(x1 <= cx < x2 and y1 <= cy < y2 for cx, cy in centres) for x1, y1, x2, y2 in patches
        )
    return {"placed": placed, "found": found}


def evaluate(frames: np.ndarray, info: list[dict], threads: int = 1) -> dict:
    import torch

    from plugins.mtcnn_faces.metric import agreement
    from plugins.mtcnn_faces.model import MTCNN

    torch.set_num_threads(threads)
    model = MTCNN().load_weights()
    reference, seconds = detect_all(model, frames)
    with_faces = [i for i, m in enumerate(info) if m["faces"]]
    result = {
        "frames": len(frames),
        "frames_with_faces": len(with_faces),
        "faces_placed": sum(m["faces"] for m in info),
        "reference_detections": sum(len(b) for b in reference),
        "reference_detections_on_face_free_frames": sum(
            len(b) for b, m in zip(reference, info, strict=True) if not m["faces"]
        ),
        "reference_per_frame": [len(b) for b in reference],
        "crowd_faces_found": placed_found(reference, info),
        "seconds_per_frame": {
            "threads": threads,
            "mean": float(np.mean(seconds)),
            "median": float(np.median(seconds)),
            "max": float(np.max(seconds)),
        },
        "raw_bytes_per_frame": int(frames[0].size),
        "conditions": {},
    }
    conditions = {f"jpeg q{q}": (lambda f, q=q: jpeg(f, q)) for q in JPEG_QUALITIES}
    for factor in DOWNSCALES:
        conditions[f"downscale {factor}x"] = lambda f, factor=factor: downscaled(f, factor)
    for name, degrade in conditions.items():
        degraded, sizes = zip(*(degrade(f) for f in frames), strict=True)
        found, _ = detect_all(model, np.stack(degraded))
        score = agreement(found, reference)
        faces_only = agreement([found[i] for i in with_faces], [reference[i] for i in with_faces])
        result["conditions"][name] = {
            "mean_bytes": float(np.mean(sizes)),
            **score.as_dict(),
            "frames_disagreeing": [
                i
                for i, (f, r) in enumerate(zip(found, reference, strict=True))
                if agreement([f], [r]).images_agreeing == 0
            ],
            "on_frames_with_faces": faces_only.as_dict(),
        }
        print(f"{name}: {json.dumps(result['conditions'][name])}", file=sys.stderr)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m plugins.mtcnn_faces.evaluate", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)

    from plugins.mtcnn_faces.data import frame_info, load_test
    from testbed.errors import PluginError

    try:
        frames, info = load_test().inputs, frame_info()
        result = evaluate(frames, info, args.threads)
    except (PluginError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
