"""What a prediction is, per plugin task: how it comes out of the model, how it crosses
the wire, how it is recorded, and how it is compared with the reference.

A plugin declares `task` ("classification" when absent) and every part of the testbed
asks this module instead of assuming logits:

- `classification`: the model outputs logits (B, num_classes); a prediction is the
  top-1 class, an int; on the wire a big-endian int32 (4 bytes, as before tasks
  existed, so classification results are byte-identical); it agrees with the reference
  when it is equal to it.
- `detection`: the model outputs `plugin.output_shape` rows per image, and
  `plugin.predict(output)` gives per image a list of `[x1, y1, x2, y2, score]` boxes;
  on the wire a big-endian u16 count, then count x 5 big-endian float32 (count at most
  the plugin's output rows and MAX_DETECTIONS, every value finite, length exact);
  recorded rounded (coordinates to 0.01 px, scores to 1e-4); compared with the reference boxes by `plugin.counts(pred,
  ref) -> (tp, fp, fn)` (one-to-one matching), and an image agrees when it has no FP
  and no FN.

A plugin may define its own `predict(output)` for either task. Decoding a reply is
strict: anything malformed raises ValueError, which the device agent records as an
error, never a crash.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from testbed.errors import PluginError

DEFAULT_TASK = "classification"
MAX_DETECTIONS = 1024  # boxes per image on the wire (and the plugin's output rows)
CLASS_STRUCT = struct.Struct("!i")
COUNT_STRUCT = struct.Struct("!H")
BOX_FIELDS = 5  # x1, y1, x2, y2, score
BOX_DTYPE = np.dtype(">f4")


@dataclass(frozen=True)
class Comparison:
    """One request's prediction against the reference: agreement, and for detection
    the true positive, false positive and false negative boxes (None otherwise)."""

    agrees: bool
    tp: int | None = None
    fp: int | None = None
    fn: int | None = None


class Task:
    name: ClassVar[str]
    # whether a learned codec can be trained to match the model's outputs on the original
    # input (DeepCOD's "lossless inference" term, `output_loss`); False where the outputs
    # are not differentiable in a useful way (a detector's NMS'd, thresholded boxes)
    matches_outputs: ClassVar[bool] = False

    def output_loss(self, student, teacher):
        """A differentiable loss between the model's outputs on a decoded input (student)
        and on the original (teacher, no gradient), for tasks that match outputs."""
        raise NotImplementedError(f"task {self.name!r} has no output loss")

    def predict(self, plugin, output) -> list:
        """Model output for a batch -> one prediction per item."""
        raise NotImplementedError

    def encode(self, plugin, prediction) -> bytes:
        raise NotImplementedError

    def decode(self, plugin, data: bytes):
        raise NotImplementedError

    def to_record(self, prediction):
        """The JSON-ready form kept in records (and compared there)."""
        raise NotImplementedError

    def compare(self, plugin, prediction, reference) -> Comparison:
        """`prediction` None: the request failed (it never agrees)."""
        raise NotImplementedError

    def check_output(self, plugin, shape: tuple[int, ...]) -> None:
        """PluginError unless `shape` (one sample of the last stage) is what this task
        expects of the plugin."""
        raise NotImplementedError


_TASKS: dict[str, Task] = {}


def register(cls: type[Task]) -> type[Task]:
    _TASKS[cls.name] = cls()
    return cls


def names() -> list[str]:
    return list(_TASKS)


def task_of(plugin) -> Task:
    """The plugin's task (classification for a plugin that declares none, or None)."""
    name = getattr(plugin, "task", DEFAULT_TASK) or DEFAULT_TASK
    if name not in _TASKS:
        what = getattr(plugin, "name", "?")
        raise PluginError(f"plugin {what!r}: task {name!r}; allowed: {', '.join(_TASKS)}")
    return _TASKS[name]


def task_name(plugin) -> str:
    return task_of(plugin).name


def predict(plugin, output) -> list:
    """Per batch item, its prediction: the plugin's own `predict` where it has one."""
    own = getattr(plugin, "predict", None)
    if callable(own):
        return list(own(output))
    return task_of(plugin).predict(plugin, output)


def encode(plugin, prediction) -> bytes:
    return task_of(plugin).encode(plugin, prediction)


def decode(plugin, data: bytes):
    """The prediction a reply carries; ValueError (with the reason) for anything else."""
    return task_of(plugin).decode(plugin, bytes(data))


def to_record(plugin, prediction):
    return task_of(plugin).to_record(prediction)


def compare(plugin, prediction, reference) -> Comparison:
    return task_of(plugin).compare(plugin, prediction, reference)


def comparer(plugin) -> Callable[[Any, Any], Comparison]:
    """`compare` bound to the plugin, for code that only sees records."""
    task = task_of(plugin)
    return lambda prediction, reference: task.compare(plugin, prediction, reference)


@register
class Classification(Task):
    name = "classification"
    matches_outputs = True

    def output_loss(self, student, teacher):
        """KL divergence of the softmaxes (batch mean), teacher's distribution as target."""
        from torch.nn.functional import kl_div, log_softmax

        return kl_div(
            log_softmax(student, dim=1),
            log_softmax(teacher, dim=1),
            log_target=True,
            reduction="batchmean",
        )

    def predict(self, plugin, output) -> list[int]:
        return [int(k) for k in output.argmax(dim=1)]

    def encode(self, plugin, prediction) -> bytes:
        return CLASS_STRUCT.pack(int(prediction))

    def decode(self, plugin, data: bytes) -> int:
        if len(data) != CLASS_STRUCT.size:
            raise ValueError(
                f"classification result of {len(data)} bytes, expected {CLASS_STRUCT.size}"
            )
        return CLASS_STRUCT.unpack(data)[0]

    def to_record(self, prediction) -> int:
        return int(prediction)

    def compare(self, plugin, prediction, reference) -> Comparison:
        return Comparison(agrees=prediction is not None and prediction == reference)

    def check_output(self, plugin, shape) -> None:
        if shape != (plugin.num_classes,):
            raise PluginError(
                f"plugin {plugin.name!r}: the last stage gives {shape}, "
                f"expected ({plugin.num_classes},) logits"
            )


def _boxes(prediction) -> np.ndarray:
    """A list of [x1, y1, x2, y2, score] rows (or an (N, 5) array) -> float (N, 5)."""
    rows = np.asarray(prediction, dtype=np.float64)
    if rows.size == 0:
        return np.zeros((0, BOX_FIELDS))
    if rows.ndim != 2 or rows.shape[1] != BOX_FIELDS:
        raise ValueError(f"detections must be rows of {BOX_FIELDS} values, got {rows.shape}")
    return rows


@register
class Detection(Task):
    name = "detection"

    def predict(self, plugin, output) -> list:
        raise PluginError(
            f"plugin {plugin.name!r}: a detection plugin must define predict(output) "
            f"(model output -> per image, its [x1, y1, x2, y2, score] boxes)"
        )

    @staticmethod
    def most(plugin) -> int:
        """The most boxes one result may carry: the plugin's output rows."""
        shape = tuple(getattr(plugin, "output_shape", ()) or ())
        return min(int(shape[0]), MAX_DETECTIONS) if shape else MAX_DETECTIONS

    def encode(self, plugin, prediction) -> bytes:
        rows, most = _boxes(prediction), self.most(plugin)
        if len(rows) > most:
            raise ValueError(f"{len(rows)} detections, at most {most} can be sent")
        if not np.isfinite(rows).all():
            raise ValueError("detections with non-finite values cannot be sent")
        return COUNT_STRUCT.pack(len(rows)) + rows.astype(BOX_DTYPE).tobytes()

    def decode(self, plugin, data: bytes) -> list[list[float]]:
        if len(data) < COUNT_STRUCT.size:
            raise ValueError(f"detection result of {len(data)} bytes has no box count")
        (count,), most = COUNT_STRUCT.unpack_from(data), self.most(plugin)
        if count > most:
            raise ValueError(f"detection result claims {count} boxes, at most {most}")
        expected = COUNT_STRUCT.size + count * BOX_FIELDS * BOX_DTYPE.itemsize
        if len(data) != expected:
            raise ValueError(
                f"detection result of {len(data)} bytes for {count} boxes, expected {expected}"
            )
        rows = np.frombuffer(data, BOX_DTYPE, count * BOX_FIELDS, COUNT_STRUCT.size)
        if not np.isfinite(rows).all():
            raise ValueError("detection result has non-finite values")
        return rows.astype(np.float64).reshape(count, BOX_FIELDS).tolist()

    def to_record(self, prediction) -> list[list[float]]:
        return [
            [*(round(float(v), 2) for v in row[:4]), round(float(row[4]), 4)]
            for row in _boxes(prediction)
        ]

    def compare(self, plugin, prediction, reference) -> Comparison:
        """None (a failed request) found nothing: every reference box is missed."""
        found = _boxes([] if prediction is None else prediction)
        tp, fp, fn = plugin.counts(found, _boxes(reference))
        agrees = prediction is not None and fp == 0 and fn == 0
        return Comparison(agrees=agrees, tp=int(tp), fp=int(fp), fn=int(fn))

    def check_output(self, plugin, shape) -> None:
        expected = tuple(getattr(plugin, "output_shape", ()) or ())
        if len(expected) != 2 or expected[1] != BOX_FIELDS or shape != expected:
            raise PluginError(
                f"plugin {plugin.name!r}: the last stage gives {shape}; a detection plugin "
                f"declares output_shape (max boxes, {BOX_FIELDS}) and its last stage gives "
                f"that (it declares {expected or 'none'})"
            )
        if expected[0] > MAX_DETECTIONS:
            raise PluginError(
                f"plugin {plugin.name!r}: output_shape {expected} allows more than "
                f"{MAX_DETECTIONS} boxes, the most a result can carry"
            )
        if plugin.split_points:
            raise PluginError(
                f"plugin {plugin.name!r}: split_points {tuple(plugin.split_points)}; a "
                f"detection plugin declares none (no offloader splits a detector)"
            )
        for method in ("predict", "counts"):
            if not callable(getattr(plugin, method, None)):
                raise PluginError(
                    f"plugin {plugin.name!r}: a detection plugin must define {method}() "
                    f"(predict: output -> per image boxes; counts: (pred, ref) -> tp, fp, fn)"
                )
