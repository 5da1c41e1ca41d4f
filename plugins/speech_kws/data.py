"""The speech_kws data: synthesized splits from the cache, and real recordings for a check.

`load_split` returns the cached split, synthesizing it first when the cache lacks it (the
test split takes ~10 s, the training split ~1-2 min on 2 cores).

`real_digit_words` cuts single words out of the real recordings that Debian's
`pocketsphinx-testdata` ships with transcripts (TIDIGITS digits and the "cards" set).
There is no word alignment in the package, so words are cut where the energy envelope
has pauses; an utterance is used only when the number of cut segments equals the number
of words of its transcript, and otherwise skipped (and counted as such).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from plugins.speech_kws.synth import CLASSES, CLIP_SAMPLES, SAMPLE_RATE, UNKNOWN, generate
from testbed.errors import PluginError
from testbed.models.plugin_api import Dataset

REAL_DIR = Path("/usr/share/pocketsphinx/test/data")
REAL_HINT = "install it with: apt-get install pocketsphinx-testdata"


def load_split(split: str, seed: int = 0, progress: bool = True) -> Dataset:
    path = generate(split, seed, progress=progress)
    try:
        with np.load(path) as npz:
            inputs, labels = npz["inputs"], npz["labels"]
    except (OSError, ValueError, KeyError) as exc:
        raise PluginError(
            f"speech_kws cache file unreadable: {path} ({exc}); delete it to synthesize again"
        ) from exc
    if inputs.dtype != np.int16 or inputs.shape != (len(labels), 1, CLIP_SAMPLES):
        raise PluginError(
            f"speech_kws cache file malformed: {path} holds {inputs.dtype} {inputs.shape}; "
            "delete it to synthesize again"
        )
    return Dataset(inputs=inputs, labels=labels.astype(np.int64))


# utterance file -> transcript (from the package's .match / .transcription files)
REAL_UTTERANCES = {
    "tidigits/dhd.2934z.raw": "two nine three four zero",
    "cards/001.wav": "ten of clubs",
    "cards/002.wav": "four queen of clubs",
    "cards/003.wav": "seven of clubs",
    "cards/004.wav": "five five",
    "cards/005.wav": "eight of spades four of clubs seven of hearts",
}


def _read(path: Path) -> np.ndarray:
    data = path.read_bytes()
    if path.suffix == ".wav":
        data = data[44:]  # 16 kHz mono int16 PCM with the canonical 44-byte header
    return np.frombuffer(data[: len(data) // 2 * 2], dtype="<i2")


def segment(wave: np.ndarray, min_pause_s: float = 0.06, min_word_s: float = 0.1) -> list:
    """(start, end) sample ranges of the loud stretches between pauses."""
    frame = SAMPLE_RATE // 100
    n = len(wave) // frame
    energy = 10 * np.log10(
        np.mean(wave[: n * frame].astype(np.float64).reshape(n, frame) ** 2, axis=1) + 1
    )
    loud = energy > energy.max() - 30
    runs, start, quiet = [], None, 0
    for i, on in enumerate(loud):
        if on:
            start = i if start is None else start
            quiet = 0
        elif start is not None:
            quiet += 1
            if quiet >= min_pause_s * 100:
                runs.append((start, i - quiet + 1))
                start, quiet = None, 0
    if start is not None:
        runs.append((start, n))
    return [(a * frame, b * frame) for a, b in runs if (b - a) >= min_word_s * 100]


def real_digit_words() -> tuple[Dataset, list[str], int]:
    """Real words cut into 1 s clips (centred, zero-padded), their labels (digits, or
    "unknown" for other words), the words themselves, and the number of utterances
    skipped because their segments did not match their transcripts."""
    if not REAL_DIR.is_dir():
        raise PluginError(f"pocketsphinx test data missing: {REAL_DIR}; {REAL_HINT}")
    clips, labels, words, skipped = [], [], [], 0
    for name, text in REAL_UTTERANCES.items():
        wave = _read(REAL_DIR / name)
        spans = segment(wave)
        said = text.split()
        if len(spans) != len(said):
            skipped += 1
            continue
        for (a, b), word in zip(spans, said, strict=True):
            piece = wave[a:b][:CLIP_SAMPLES]
            clip = np.zeros(CLIP_SAMPLES, dtype=np.int16)
            start = (CLIP_SAMPLES - len(piece)) // 2
            clip[start : start + len(piece)] = piece
            clips.append(clip)
            labels.append(CLASSES.index(word) if word in CLASSES else UNKNOWN)
            words.append(word)
    inputs = np.stack(clips)[:, None, :] if clips else np.zeros((0, 1, CLIP_SAMPLES), np.int16)
    return Dataset(inputs=inputs, labels=np.array(labels, dtype=np.int64)), words, skipped
