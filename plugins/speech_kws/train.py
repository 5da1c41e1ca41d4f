"""Train the speech_kws weights: `python -m plugins.speech_kws.train [--epochs N] [--seed S]`.

Synthesizes the data first if the cache lacks it. Reproducible bit for bit from the seed on
one machine, as fashion_cnn's training is: seeded generators for every random draw
(initial weights, shuffling, dropout, time shifts), `torch.use_deterministic_algorithms`,
a fixed thread count, and weights serialised through memory. Evaluates once on the held-out
test voices after the last epoch (no model selection on them), then on the real recordings
of pocketsphinx-testdata (see `data.real_digit_words` and `spot`), a report only.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
from torch import nn

from plugins.speech_kws import make_plugin
from plugins.speech_kws.synth import CLASSES, SAMPLE_RATE, SILENCE, UNKNOWN, make_plan
from testbed.models.plugin_api import Dataset, Plugin
from testbed.models.training import parse_arguments, save_state_dict, train_classifier

MAX_SHIFT = SAMPLE_RATE // 10  # time shifts of up to +-100 ms during training


def shift(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Move each clip by a random number of samples, filling with zeros."""
    out = torch.zeros_like(x)
    shifts = torch.randint(-MAX_SHIFT, MAX_SHIFT + 1, (x.shape[0],), generator=generator)
    n = x.shape[-1]
    for i, s in enumerate(shifts.tolist()):
        if s >= 0:
            out[i, :, s:] = x[i, :, : n - s]
        else:
            out[i, :, : n + s] = x[i, :, -s:]
    return out


@torch.inference_mode()
def predict(plugin: Plugin, model: nn.Module, inputs: np.ndarray, batch_size: int = 256):
    model.eval()
    logits = [
        model(plugin.to_tensor(inputs[start : start + batch_size]))
        for start in range(0, len(inputs), batch_size)
    ]
    return torch.cat(logits) if logits else torch.zeros(0, plugin.num_classes)


def accuracy(plugin: Plugin, model: nn.Module, data: Dataset) -> float:
    pred = predict(plugin, model, data.inputs).argmax(dim=1).numpy()
    return float((pred == data.labels).mean())


def adamw(parameters, lr: float) -> torch.optim.Optimizer:
    """AdamW (weight decay) under the one-cycle schedule, with label smoothing 0.1 and
    random time shifts (`main`)."""
    return torch.optim.AdamW(parameters, lr=lr, weight_decay=1e-3)


def spot(plugin: Plugin, model: nn.Module, wave: np.ndarray, hop_s: float = 0.1) -> list[str]:
    """Keyword spotting over a longer recording: classify 1 s windows every `hop_s` seconds
    and keep each run of at least two consecutive windows with the same keyword."""
    hop = int(hop_s * SAMPLE_RATE)
    padded = np.concatenate([np.zeros(SAMPLE_RATE // 2, np.int16), wave])
    padded = np.concatenate([padded, np.zeros(SAMPLE_RATE // 2, np.int16)])
    starts = range(0, max(len(padded) - SAMPLE_RATE, 0) + 1, hop)
    windows = np.stack([padded[s : s + SAMPLE_RATE] for s in starts])[:, None, :]
    pred = predict(plugin, model, windows).argmax(dim=1).tolist()
    found, run = [], 0
    for i, p in enumerate(pred):
        run = run + 1 if i and p == pred[i - 1] else 1
        if run == 2 and p not in (UNKNOWN, SILENCE):
            found.append(CLASSES[p])
    return found


def real_speech_report(plugin: Plugin, model: nn.Module) -> None:
    from plugins.speech_kws.data import REAL_DIR, REAL_UTTERANCES, _read, real_digit_words

    data, words, skipped = real_digit_words()
    if len(data):
        pred = predict(plugin, model, data.inputs).argmax(dim=1).tolist()
        shown = ", ".join(f"{w}->{CLASSES[p]}" for w, p in zip(words, pred, strict=True))
        hits = sum(p == y for p, y in zip(pred, data.labels.tolist(), strict=True))
        print(
            f"real isolated words: {hits}/{len(data)} correct ({shown}); "
            f"{skipped} of {len(REAL_UTTERANCES)} utterances skipped (no clean pauses)"
        )
    for name, text in REAL_UTTERANCES.items():
        said = [w for w in text.split() if w in CLASSES]
        found = spot(plugin, model, _read(REAL_DIR / name))
        print(f"real spotting {name}: said digits {said}, spotted {found} ({text!r})")


def main(argv: list[str] | None = None) -> int:
    plugin = make_plugin()
    args = parse_arguments(argv, plugin, __doc__, epochs=20, batch_size=64, threads=1)
    started = time.monotonic()
    smoothed = nn.CrossEntropyLoss(label_smoothing=0.1)
    model = train_classifier(plugin, args, adamw, shift, smoothed)
    size = save_state_dict(model, args.out)
    elapsed = time.monotonic() - started
    test = plugin.test_data()
    pred = predict(plugin, model, test.inputs).argmax(dim=1).numpy()
    correct = int((pred == test.labels).sum())
    print(f"test accuracy (held-out voices): {correct / len(test):.4f} ({correct}/{len(test)})")
    voices = np.array([s.voice for s in make_plan("test")])
    for voice in dict.fromkeys(voices):
        mask = voices == voice
        print(f"  {voice}: {(pred[mask] == test.labels[mask]).mean():.4f}")
    print(f"saved {args.out} ({size} bytes) after {elapsed:.0f} s")
    real_speech_report(plugin, model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
