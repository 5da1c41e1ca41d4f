"""MTCNN face detection (Zhang et al., 2016) in plain torch, with facenet-pytorch's weights.

The PyPI wheel `facenet-pytorch==2.6.0` ships the P-Net, R-Net and O-Net state dicts
(`facenet_pytorch/data/{pnet,rnet,onet}.pt`). The package itself is never imported (its
`__init__` imports torchvision, which does not import beside the CPU torch wheel): the
files are found with `importlib.util.find_spec`, read with `weights_only=True`, and loaded
with `strict=True` into the networks below, whose parameter names are those of the files.

The cascade follows facenet-pytorch's `detect_face` (default settings: smallest face 20 px,
pyramid factor 0.709, thresholds 0.6/0.7/0.7), including its conventions, so that its
detections are what the reference implementation would give:
- every resize is `interpolate(mode="area")` (an average over the covered source pixels);
- P-Net boxes: non-maximum suppression (NMS) per pyramid scale at IoU 0.5, then over all
  scales at 0.7, box areas without the +1 pixel; regression with width `x2 - x1`;
- boxes are made square about their centre, truncated to integers and clamped to the image
  (no zero padding: a box that leaves the image is cropped to its inside part, then
  resized to 24x24 or 48x48, as facenet-pytorch does);
- R-Net: score > 0.7, NMS 0.7 (on the boxes before regression), regression with width
  `x2 - x1 + 1`, square again; O-Net: score > 0.7, regression, then NMS "Min" at 0.7 with
  the +1 pixel areas of the original MATLAB code.
One deliberate difference: a box whose clamped crop is empty (it lies outside the image) is
dropped; facenet-pytorch skips its crop but keeps the box, so its scores would shift.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

WEIGHTS_PACKAGE = "facenet_pytorch"
WEIGHTS_PIP = "pip install --no-deps facenet-pytorch==2.6.0"
NETWORKS = ("pnet", "rnet", "onet")

MIN_FACE = 20
FACTOR = 0.709
THRESHOLDS = (0.6, 0.7, 0.7)
# The networks were trained on pixels mapped to about [-1, 1] this way.
MEAN, SCALE = 127.5, 0.0078125


class PNet(nn.Module):
    """Fully convolutional proposal network: a 12x12 window per output cell, stride 2."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, kernel_size=3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, kernel_size=3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) normalised -> box offsets (B, 4, h, w), face probability (B, h, w)."""
        x = self.prelu1(self.conv1(x))
        x = self.pool1(x)
        x = self.prelu2(self.conv2(x))
        x = self.prelu3(self.conv3(x))
        return self.conv4_2(x), torch.softmax(self.conv4_1(x), dim=1)[:, 1]


def _flatten_hwc(x: torch.Tensor) -> torch.Tensor:
    """Flatten in the (W, H, C) order the dense layers were converted from (Caffe/TF)."""
    return x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)


class RNet(nn.Module):
    """Refinement network on 24x24 crops."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, kernel_size=3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, kernel_size=3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, kernel_size=2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3, 24, 24) -> box offsets (N, 4), face probability (N,)."""
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        x = self.prelu4(self.dense4(_flatten_hwc(x)))
        return self.dense5_2(x), torch.softmax(self.dense5_1(x), dim=1)[:, 1]


class ONet(nn.Module):
    """Output network on 48x48 crops (its five landmarks are computed but not used here)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3, 48, 48) -> box offsets (N, 4), face probability (N,)."""
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = self.prelu5(self.dense5(_flatten_hwc(x)))
        return self.dense6_2(x), torch.softmax(self.dense6_1(x), dim=1)[:, 1]


# --- boxes -------------------------------------------------------------------------------


def nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    threshold: float,
    mode: str = "union",
    pixel: float = 0.0,
) -> torch.Tensor:
    """Greedy non-maximum suppression; indices of the kept boxes, best score first.

    Repeatedly keep the best remaining box and drop every other whose overlap with it is
    above `threshold`: overlap is intersection over union (`mode="union"`) or over the
    smaller of the two areas (`"min"`, which also removes a small box inside a large one).
    `pixel=1` counts coordinates as inclusive pixel indices (width `x2 - x1 + 1`), as the
    original MATLAB code does. Ties in score keep the earlier box (stable sort), so the
    result is deterministic.
    """
    if mode not in ("union", "min"):
        raise ValueError(f"nms mode {mode!r}; one of union, min")
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long)
    x1, y1, x2, y2 = boxes[:, :4].unbind(1)
    areas = (x2 - x1 + pixel) * (y2 - y1 + pixel)
    order = torch.sort(scores, descending=True, stable=True).indices
    keep = []
    while order.numel():
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        w = (torch.minimum(x2[i], x2[rest]) - torch.maximum(x1[i], x1[rest]) + pixel).clamp(min=0)
        h = (torch.minimum(y2[i], y2[rest]) - torch.maximum(y1[i], y1[rest]) + pixel).clamp(min=0)
        inter = w * h
        if mode == "min":
            overlap = inter / torch.minimum(areas[i], areas[rest])
        else:
            overlap = inter / (areas[i] + areas[rest] - inter)
        order = rest[overlap <= threshold]
    return torch.tensor(keep, dtype=torch.long)


def square(boxes: torch.Tensor) -> torch.Tensor:
    """Boxes grown to squares about their centres (side: the longer of width and height)."""
    out = boxes.clone()
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    side = torch.maximum(w, h)
    # Same operation order as facenet-pytorch, so that float rounding agrees too.
    out[:, 0] = boxes[:, 0] + w * 0.5 - side * 0.5
    out[:, 1] = boxes[:, 1] + h * 0.5 - side * 0.5
    out[:, 2] = out[:, 0] + side
    out[:, 3] = out[:, 1] + side
    return out


def regress(boxes: torch.Tensor, offsets: torch.Tensor, pixel: float = 1.0) -> torch.Tensor:
    """Move each edge by its offset times the box's width or height (`+ pixel`)."""
    out = boxes.clone()
    w = boxes[:, 2] - boxes[:, 0] + pixel
    h = boxes[:, 3] - boxes[:, 1] + pixel
    out[:, :4] = boxes[:, :4] + offsets * torch.stack([w, h, w, h], dim=1)
    return out


def pyramid_scales(height: int, width: int, min_face: int = MIN_FACE, factor: float = FACTOR):
    """Scales at which P-Net's 12 px window sees faces of min_face px and larger."""
    scale = 12.0 / min_face
    short = min(height, width) * scale
    scales = []
    while short >= 12:
        scales.append(scale)
        scale *= factor
        short *= factor
    return scales


def _proposals(prob: torch.Tensor, offsets: torch.Tensor, scale: float, threshold: float):
    """P-Net cells above threshold -> (N, 9): x1, y1, x2, y2, score, 4 offsets (image px)."""
    ys, xs = torch.nonzero(prob >= threshold, as_tuple=True)
    cells = torch.stack([xs, ys], dim=1).to(prob.dtype)
    top_left = torch.floor((2 * cells + 1) / scale)
    bottom_right = torch.floor((2 * cells + 12) / scale)
    return torch.cat([top_left, bottom_right, prob[ys, xs, None], offsets[:, ys, xs].T], dim=1)


def _crops(image: torch.Tensor, boxes: torch.Tensor, size: int):
    """Crop each box (truncated, clamped to the image) and resize it to size x size.
    Returns the normalised crops and the mask of boxes that have a non-empty crop."""
    _, height, width = image.shape
    ints = boxes[:, :4].trunc().to(torch.int64)
    x1 = ints[:, 0].clamp(min=1) - 1
    y1 = ints[:, 1].clamp(min=1) - 1
    x2 = ints[:, 2].clamp(max=width)
    y2 = ints[:, 3].clamp(max=height)
    valid = (x2 > x1) & (y2 > y1)
    crops = [
        F.interpolate(image[None, :, y1[k] : y2[k], x1[k] : x2[k]], size=(size, size), mode="area")
        for k in torch.nonzero(valid).flatten().tolist()
    ]
    if not crops:
        return image.new_zeros(0, 3, size, size), valid
    return (torch.cat(crops) - MEAN) * SCALE, valid


class MTCNN(nn.Module):
    """The three networks and the cascade that chains them.

    `detect(image)` takes one float image (3, H, W) with pixel values in [0, 255] and
    returns an (N, 5) tensor of faces (x1, y1, x2, y2, score) in its pixel coordinates,
    best score first.
    """

    def __init__(self, min_face: int = MIN_FACE, factor: float = FACTOR, thresholds=THRESHOLDS):
        super().__init__()
        self.pnet, self.rnet, self.onet = PNet(), RNet(), ONet()
        self.min_face, self.factor, self.thresholds = min_face, factor, tuple(thresholds)

    def load_weights(self, directory: Path | None = None) -> MTCNN:
        """Load facenet-pytorch's three state dicts strictly; eval mode."""
        directory = weights_dir() if directory is None else Path(directory)
        for name in NETWORKS:
            state = torch.load(directory / f"{name}.pt", map_location="cpu", weights_only=True)
            getattr(self, name).load_state_dict(state, strict=True)
        return self.eval()

    @torch.inference_mode()
    def detect(self, image: torch.Tensor) -> torch.Tensor:
        image = image.to(torch.float32)
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"expected one (3, H, W) image, got shape {tuple(image.shape)}")
        _, height, width = image.shape
        t1, t2, t3 = self.thresholds
        empty = image.new_zeros(0, 5)

        # Stage 1: P-Net over the image pyramid.
        per_scale = []
        for scale in pyramid_scales(height, width, self.min_face, self.factor):
            size = (int(height * scale + 1), int(width * scale + 1))
            scaled = (F.interpolate(image[None], size=size, mode="area") - MEAN) * SCALE
            offsets, prob = self.pnet(scaled)
            found = _proposals(prob[0], offsets[0], scale, t1)
            per_scale.append(found[nms(found[:, :4], found[:, 4], 0.5)])
        boxes = torch.cat(per_scale) if per_scale else image.new_zeros(0, 9)
        boxes = boxes[nms(boxes[:, :4], boxes[:, 4], 0.7)]
        if not len(boxes):
            return empty
        boxes = square(regress(boxes[:, :5], boxes[:, 5:9], pixel=0.0))

        # Stage 2: R-Net on 24x24 crops.
        crops, valid = _crops(image, boxes, 24)
        boxes = boxes[valid]
        if not len(boxes):
            return empty
        offsets, score = self.rnet(crops)
        passed = score > t2
        boxes = torch.cat([boxes[passed, :4], score[passed, None]], dim=1)
        offsets = offsets[passed]
        keep = nms(boxes[:, :4], boxes[:, 4], 0.7)
        boxes = square(regress(boxes[keep], offsets[keep]))
        if not len(boxes):
            return empty

        # Stage 3: O-Net on 48x48 crops.
        crops, valid = _crops(image, boxes, 48)
        boxes = boxes[valid]
        if not len(boxes):
            return empty
        offsets, score = self.onet(crops)
        passed = score > t3
        boxes = torch.cat([boxes[passed, :4], score[passed, None]], dim=1)
        boxes = regress(boxes, offsets[passed])
        return boxes[nms(boxes[:, :4], boxes[:, 4], 0.7, mode="min", pixel=1.0)]

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) floats in [0, 255] -> one (N_i, 5) tensor per image."""
        return [self.detect(image) for image in images]


class PaddedMTCNN(MTCNN):
    """The detector as a model stage: a fixed-shape output, so that a batch is one tensor."""

    def __init__(self, max_detections: int, **kwargs):
        super().__init__(**kwargs)
        self.max_detections = max_detections

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) floats in [0, 255] -> (B, max_detections, 5): each image's faces,
        best first (beyond max_detections dropped), then zero rows."""
        out = images.new_zeros(len(images), self.max_detections, 5)
        for i, image in enumerate(images):
            found = self.detect(image)[: self.max_detections]
            out[i, : len(found)] = found
        return out


def weights_dir() -> Path:
    """facenet-pytorch's data folder, found without importing the package (whose
    `__init__` imports torchvision). FileNotFoundError names the install command."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        directory = Path(next(iter(spec.submodule_search_locations))) / "data"
        if all((directory / f"{name}.pt").is_file() for name in NETWORKS):
            return directory
    raise FileNotFoundError(
        f"MTCNN weights (facenet_pytorch/data/{{pnet,rnet,onet}}.pt) not installed; "
        f"install them with: {WEIGHTS_PIP}"
    )


def to_chw(image) -> torch.Tensor:
    """uint8 (H, W, 3) RGB array or tensor, or (3, H, W), -> float (3, H, W) in [0, 255]."""
    tensor = torch.as_tensor(np.array(image) if isinstance(image, np.ndarray) else image)
    if tensor.dim() == 3 and tensor.shape[-1] == 3 and tensor.shape[0] != 3:
        tensor = tensor.permute(2, 0, 1)
    return tensor.to(torch.float32)
