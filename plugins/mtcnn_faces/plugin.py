"""mtcnn_faces: MTCNN face detection on 640x480 RGB frames, as a testbed Plugin of task
"detection" (`testbed.models.predictions`): its predictions are box lists, compared with the
unmodified detector's by `metric.counts` (one-to-one at IoU >= 0.5).

The model is one stage (no split points): each cascade stage re-reads the image (P-Net at
every pyramid scale, R-Net and O-Net on crops of it), so there is no cut where less than
the image has to cross. Its output is a fixed-shape tensor (B, MAX_DETECTIONS, 5) of
(x1, y1, x2, y2, score) rows, best first, padded with zero rows (score 0 is never a
detection: the last threshold is 0.7); `predict` turns it into per-image box lists.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from testbed.errors import PluginError
from testbed.models.plugin_api import Dataset, InputSpec, Plugin

MAX_DETECTIONS = 64
INPUT_SHAPE = (3, 480, 640)


@dataclass
class MTCNNFaces(Plugin):
    task: str = "detection"
    output_shape: tuple[int, ...] = (MAX_DETECTIONS, 5)

    def build_stages(self) -> list:
        from plugins.mtcnn_faces.model import PaddedMTCNN

        return [PaddedMTCNN(MAX_DETECTIONS)]

    def test_data(self) -> Dataset:
        from plugins.mtcnn_faces.data import load_test

        return load_test()

    def train_data(self) -> Dataset:
        """Frames from photos that no test frame uses (`data.load_train`; no faces), for
        learned codecs (DeepCOD); labels -1."""
        from plugins.mtcnn_faces.data import load_train

        return load_train()

    def calibration_data(self) -> Dataset:
        """Adaptive offloaders (jpeg/webp `quality: auto`, deepdecision) calibrate on the
        test frames themselves, which is optimistic (options are chosen on the frames they
        are then scored on; scenarios say so): the train split has no faces, so detection
        agreement on it would say nothing."""
        return self.test_data()

    def to_tensor(self, inputs: np.ndarray):
        """uint8 (B, 3, H, W) -> float pixel values in [0, 255]: MTCNN normalises itself,
        and keeping the raw scale avoids a round trip through [0, 1]."""
        import torch

        return torch.from_numpy(np.ascontiguousarray(inputs)).float()

    def load_model(self):
        """The detector with facenet-pytorch's three state dicts, loaded strictly."""
        import torch

        from plugins.mtcnn_faces.model import WEIGHTS_PIP, weights_dir

        try:
            directory = weights_dir()
        except FileNotFoundError as exc:
            raise PluginError(f"plugin {self.name!r}: {exc}") from None
        model = torch.nn.Sequential(*self.build_stages())
        try:
            model[0].load_weights(directory)
        except Exception as exc:  # torch raises many kinds for a foreign or truncated file
            raise PluginError(
                f"plugin {self.name!r}: MTCNN weights in {directory} do not load "
                f"({type(exc).__name__}: {str(exc)[:300]}); reinstall with: {WEIGHTS_PIP}"
            ) from exc
        return model.eval()

    @staticmethod
    def predict(output) -> list[list[list[float]]]:
        """Model output (B, MAX_DETECTIONS, 5) -> per image, its [x1, y1, x2, y2, score]
        rows (JSON-ready), best first, padding removed."""
        rows = np.asarray(output.detach().cpu() if hasattr(output, "detach") else output)
        return [[[float(v) for v in row] for row in image if row[4] > 0] for image in rows]

    @staticmethod
    def counts(pred, ref) -> tuple[int, int, int]:
        """(TP, FP, FN) of one image's boxes against the reference's (`metric.counts`)."""
        from plugins.mtcnn_faces.metric import counts

        return counts(pred, ref)


def make_plugin() -> MTCNNFaces:
    return MTCNNFaces(
        name="mtcnn_faces",
        description="MTCNN face detection (facenet-pytorch weights) on 640x480 RGB frames",
        input_spec=InputSpec(shape=INPUT_SHAPE, dtype="uint8", low=0, high=255),
        num_classes=0,  # not a classifier: see output_shape
        split_points=(),
        metric="detection_agreement",
    )
