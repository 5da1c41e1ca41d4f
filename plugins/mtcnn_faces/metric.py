"""Detection agreement: how well detections on a modified input reproduce the reference.

There are no ground-truth face boxes for the photos, so, as with classification
agreement, the reference is the unmodified detector's output on the unmodified input.
Boxes are matched one to one, greedily by IoU (the highest-IoU pair first) at IoU >= 0.5;
a matched prediction is a true positive, an unmatched prediction a false positive, an
unmatched reference box a false negative. Scores are not compared (both detectors only
report boxes above their own threshold).

Over a data set: precision = TP / (TP + FP), recall = TP / (TP + FN), each taken as 1.0
when its denominator is 0 (nothing predicted / nothing to find: no disagreement), and an
image agrees when it has no FP and no FN (so an image where both find nothing agrees).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IOU_THRESHOLD = 0.5


def as_boxes(boxes) -> np.ndarray:
    """Any (N, >=4) array-like (a torch tensor, a list of lists, or empty) -> float (N, 4)."""
    array = np.asarray(boxes.tolist() if hasattr(boxes, "tolist") else boxes, dtype=np.float64)
    if array.size == 0:
        return np.zeros((0, 4))
    if array.ndim != 2 or array.shape[1] < 4:
        raise ValueError(f"boxes must be (N, 4+), got shape {array.shape}")
    return array[:, :4]


def iou_matrix(a, b) -> np.ndarray:
    """IoU of every box of `a` with every box of `b`, continuous coordinates
    (x1, y1, x2, y2); a box of zero area has IoU 0 with everything."""
    a, b = as_boxes(a), as_boxes(b)
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    ax1, ay1, ax2, ay2 = (a[:, i, None] for i in range(4))
    bx1, by1, bx2, by2 = (b[None, :, i] for i in range(4))
    w = np.clip(np.minimum(ax2, bx2) - np.maximum(ax1, bx1), 0, None)
    h = np.clip(np.minimum(ay2, by2) - np.maximum(ay1, by1), 0, None)
    inter = w * h
    area_a = np.clip(ax2 - ax1, 0, None) * np.clip(ay2 - ay1, 0, None)
    area_b = np.clip(bx2 - bx1, 0, None) * np.clip(by2 - by1, 0, None)
    union = area_a + area_b - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def match(pred, ref, threshold: float = IOU_THRESHOLD) -> list[tuple[int, int]]:
    """One-to-one (pred index, ref index) pairs, greedily by IoU (ties: lower indices
    first), each with IoU >= threshold."""
    ious = iou_matrix(pred, ref)
    pi, ri = np.nonzero(ious >= threshold)
    order = np.lexsort((ri, pi, -ious[pi, ri]))  # IoU descending, then pred, then ref
    used_p, used_r, pairs = set(), set(), []
    for k in order:
        p, r = int(pi[k]), int(ri[k])
        if p not in used_p and r not in used_r:
            used_p.add(p)
            used_r.add(r)
            pairs.append((p, r))
    return pairs


def counts(pred, ref, threshold: float = IOU_THRESHOLD) -> tuple[int, int, int]:
    """(true positives, false positives, false negatives) of one image."""
    pred, ref = as_boxes(pred), as_boxes(ref)
    tp = len(match(pred, ref, threshold))
    return tp, len(pred) - tp, len(ref) - tp


@dataclass(frozen=True)
class Agreement:
    images: int
    tp: int
    fp: int
    fn: int
    images_agreeing: int  # no FP and no FN (both empty counts)

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def image_agreement(self) -> float:
        return self.images_agreeing / self.images if self.images else 1.0

    def as_dict(self) -> dict:
        return {
            "images": self.images,
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "precision": self.precision,
            "recall": self.recall,
            "image_agreement": self.image_agreement,
        }


def agreement(preds, refs, threshold: float = IOU_THRESHOLD) -> Agreement:
    """Detection agreement of per-image predictions with per-image reference boxes."""
    preds, refs = list(preds), list(refs)
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions for {len(refs)} reference images")
    tp = fp = fn = agreeing = 0
    for pred, ref in zip(preds, refs, strict=True):
        t, p, n = counts(pred, ref, threshold)
        tp, fp, fn = tp + t, fp + p, fn + n
        agreeing += p == 0 and n == 0
    return Agreement(images=len(refs), tp=tp, fp=fp, fn=fn, images_agreeing=agreeing)
