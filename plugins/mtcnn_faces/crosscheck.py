"""Cross-check model.py against facenet-pytorch's own cascade:
`python -m plugins.mtcnn_faces.crosscheck [FRAME ...]` (default: every test frame).

facenet-pytorch cannot be imported here (its package imports torchvision, which does not
import beside the CPU torch wheel, and `requests`). Its `models/mtcnn.py` and
`models/utils/detect_face.py` only need torchvision for `batched_nms` (and an unused
`transforms.functional`), so this script, in its own process, loads those two files from
the installed wheel under a private package name, with stand-in `torchvision` modules
whose `batched_nms` is a naive greedy NMS written independently of model.nms (pairwise,
in float64), runs their `MTCNN.detect` and ours on the same frames, and prints per frame
the two detection counts and the largest coordinate/score difference, as JSON.
Never import this module into a process that may import the real torchvision.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np

PRIVATE = "_facenet_reference"


def naive_batched_nms(boxes, scores, groups, threshold):
    """torchvision.ops.batched_nms semantics: per group, best score first, drop a box
    whose IoU (areas without +1) with a kept box is above threshold."""
    import torch

    b = boxes.double().numpy()
    s = scores.double().numpy()
    g = groups.numpy()
    kept: list[int] = []
    for i in sorted(range(len(s)), key=lambda i: -s[i]):
        for k in kept:
            if g[k] != g[i]:
                continue
            iw = max(0.0, min(b[i, 2], b[k, 2]) - max(b[i, 0], b[k, 0]))
            ih = max(0.0, min(b[i, 3], b[k, 3]) - max(b[i, 1], b[k, 1]))
            inter = iw * ih
            area_i = (b[i, 2] - b[i, 0]) * (b[i, 3] - b[i, 1])
            area_k = (b[k, 2] - b[k, 0]) * (b[k, 3] - b[k, 1])
            if inter / (area_i + area_k - inter) > threshold:
                break
        else:
            kept.append(i)
    return torch.tensor(kept, dtype=torch.long)


def load_reference():
    """facenet-pytorch's MTCNN class, from the installed files, torchvision stubbed."""
    from plugins.mtcnn_faces.model import weights_dir

    root = weights_dir().parent
    for name in (
        "torchvision",
        "torchvision.transforms",
        "torchvision.transforms.functional",
        "torchvision.ops",
        "torchvision.ops.boxes",
    ):
        if name in sys.modules and not getattr(sys.modules[name], "_stub", False):
            raise RuntimeError("the real torchvision is loaded; run this in its own process")
        sys.modules[name] = types.ModuleType(name)
        sys.modules[name]._stub = True
    sys.modules["torchvision.ops.boxes"].batched_nms = naive_batched_nms
    sys.modules["torchvision.transforms"].functional = sys.modules[
        "torchvision.transforms.functional"
    ]
    for name, path in (
        (PRIVATE, root),
        (f"{PRIVATE}.models", root / "models"),
        (f"{PRIVATE}.models.utils", root / "models" / "utils"),
    ):
        package = types.ModuleType(name)
        package.__path__ = [str(path)]
        sys.modules[name] = package

    def load(name: str, path: Path):
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module

    load(f"{PRIVATE}.models.utils.detect_face", root / "models" / "utils" / "detect_face.py")
    return load(f"{PRIVATE}.models.mtcnn", root / "models" / "mtcnn.py").MTCNN


def compare(frames: np.ndarray, indices: list[int]) -> dict[int, dict]:
    import torch

    from plugins.mtcnn_faces.model import MTCNN

    torch.set_num_threads(1)
    theirs_model = load_reference()(keep_all=True, select_largest=False)
    ours_model = MTCNN().load_weights()
    report = {}
    for i in indices:
        frame = frames[i]
        boxes, probs = theirs_model.detect(np.ascontiguousarray(frame.transpose(1, 2, 0)))
        theirs = (
            np.zeros((0, 5))
            if boxes is None
            else np.concatenate([boxes, np.asarray(probs, dtype=np.float64)[:, None]], axis=1)
        )
        theirs = theirs[np.argsort(-theirs[:, 4], kind="stable")]
        ours = ours_model.detect(torch.from_numpy(frame).float()).numpy().astype(np.float64)
        same = len(ours) == len(theirs)
        report[i] = {
            "ours": len(ours),
            "theirs": len(theirs),
            "max_abs_diff": float(np.abs(ours - theirs).max()) if same and len(ours) else None,
        }
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m plugins.mtcnn_faces.crosscheck", description=__doc__.splitlines()[0]
    )
    parser.add_argument("frames", nargs="*", type=int, help="test frame indices (default: all)")
    args = parser.parse_args(argv)

    from plugins.mtcnn_faces.data import load_test

    frames = load_test().inputs
    indices = args.frames or list(range(len(frames)))
    if any(not 0 <= i < len(frames) for i in indices):
        parser.error(f"frame indices must be in 0..{len(frames) - 1}")
    print(json.dumps(compare(frames, indices)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
