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
from tqdm import tqdm

from plugins.speech_kws import WEIGHTS, make_plugin
from plugins.speech_kws.synth import CLASSES, SAMPLE_RATE, SILENCE, UNKNOWN, make_plan
from testbed.models.plugin_api import Dataset, Plugin
from testbed.models.training import parse_arguments, save_state_dict, seed_everything

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


def train(epochs: int, seed: int, threads: int, batch_size: int, lr: float) -> nn.Module:
    """AdamW under a one-cycle schedule, label smoothing 0.1, random time shifts."""
    seed_everything(seed, threads)
    plugin = make_plugin()
    data = plugin.train_data()
    stages = plugin.build_stages()
    model = nn.Sequential(*stages)
    features, cnn = stages[0], nn.Sequential(*stages[1:])
    labels = torch.from_numpy(data.labels)
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = (len(data) + batch_size - 1) // batch_size
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, epochs=epochs, steps_per_epoch=steps_per_epoch
    )
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    bar = tqdm(total=epochs * steps_per_epoch, desc="training", unit="batch")
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(data), generator=generator).numpy()
        total, seen = 0.0, 0
        for step in range(steps_per_epoch):
            idx = order[step * batch_size : (step + 1) * batch_size]
            with torch.no_grad():  # stage 0 has no parameters
                f = features(shift(plugin.to_tensor(data.inputs[idx]), generator))
            loss = loss_fn(cnn(f), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(idx)
            seen += len(idx)
            bar.update()
        bar.set_postfix(epoch=epoch, loss=f"{total / seen:.4f}")
    bar.close()
    return model


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
    args = parse_arguments(
        argv,
        prog="python -m plugins.speech_kws.train",
        doc=__doc__,
        out=WEIGHTS,
        epochs=20,
        batch_size=64,
        threads=1,
    )

    started = time.monotonic()
    model = train(args.epochs, args.seed, args.threads, args.batch_size, args.lr)
    size = save_state_dict(model, args.out)
    elapsed = time.monotonic() - started
    plugin = make_plugin()
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
