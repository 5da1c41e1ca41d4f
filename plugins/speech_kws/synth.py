"""Synthesize the keyword clips: `python -m plugins.speech_kws.synth [--split S] [--seed N]`.

Every clip is one subprocess pipeline, `flite` or `espeak-ng` (one word, one voice, a
randomised speaking rate) into `sox` (speed, pitch, reverberation, resampling to 16 kHz
mono int16), followed in numpy by trimming, a random placement in a 1 s window, a random
level and added noise (white, pink or brown, at a random SNR). `silence` clips are noise
alone. Everything random is drawn up front, from the seed, into a plan; a clip depends on
its plan entry only, so the plan runs on 2 worker threads (2 subprocesses at a time) and
gives the same int16 bytes whatever the order in which clips finish.

The split is by VOICE: the test voices (`TEST_VOICES`) are never used for training, and
two of their espeak-ng accents and all three of their espeak-ng variants appear nowhere
in the training voices. Results are cached as one .npz per split in
`cache_dir("speech_kws")`, named after a hash of the plan's settings.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from testbed.errors import PluginError
from testbed.models.cache import cache_dir

SAMPLE_RATE = 16_000
CLIP_SAMPLES = SAMPLE_RATE  # 1 s
KEYWORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CLASSES = (*KEYWORDS, "unknown", "silence")
UNKNOWN = CLASSES.index("unknown")
SILENCE = CLASSES.index("silence")
# Words of the "unknown" class: commands, and words that the real recordings of
# pocketsphinx-testdata say between their digits ("ten of clubs", "go forward ten meters").
UNKNOWN_WORDS = (
    "go",
    "stop",
    "yes",
    "no",
    "left",
    "right",
    "up",
    "down",
    "on",
    "off",
    "ten",
    "hundred",
    "of",
    "clubs",
    "forward",
    "meters",
    "queen",
    "hearts",
    "spades",
    "dog",
)

TOOLS = {"flite": "flite", "espeak-ng": "espeak-ng", "sox": "sox"}  # executable -> package
INSTALL_HINT = "install them with: apt-get install flite espeak-ng sox"

# A voice is "flite:<name>" or "espeak-ng:<accent>+<variant>".
# flite's voices are CMU ARCTIC speakers (kal, kal16: the same speaker at 8 and 16 kHz);
# awb_time is a talking clock and cannot say arbitrary words.
TRAIN_VOICES = (
    "flite:kal",
    "flite:kal16",
    "flite:awb",
    "flite:slt",
    "espeak-ng:en-us+m1",
    "espeak-ng:en-us+f2",
    "espeak-ng:en-gb+m2",
    "espeak-ng:en-gb+f1",
    "espeak-ng:en-gb-scotland+m3",
    "espeak-ng:en-gb-scotland+f3",
    "espeak-ng:en-gb-x-rp+m4",
    "espeak-ng:en-gb-x-rp+f2",
    "espeak-ng:en-us-nyc+m5",
    "espeak-ng:en-us-nyc+f1",
    "espeak-ng:en-gb-x-gbclan+m2",
    "espeak-ng:en-gb-x-gbclan+f3",
    "espeak-ng:en-us+klatt",
    "espeak-ng:en-gb+m6",
    "espeak-ng:en-us+m3",
    "espeak-ng:en-us+Andy",
    "espeak-ng:en-gb+klatt2",
    "espeak-ng:en-gb-scotland+f1",
    "espeak-ng:en-gb-x-rp+m1",
    "espeak-ng:en-us-nyc+klatt3",
    "espeak-ng:en-gb-x-gbclan+m4",
    "espeak-ng:en-gb+Annie",
)
TEST_VOICES = (
    "flite:rms",
    "espeak-ng:en-029+f4",
    "espeak-ng:en-gb-x-gbcwmd+m7",
    "espeak-ng:en-us+f5",
)
# clips per (voice, class); the test split is kept small so that the tests can build it.
# flite's voices get more training clips than espeak-ng's: they are fewer and more natural.
CLIPS_PER_CLASS = {"train": 6, "test": 5}
FLITE_TRAIN_CLIPS_PER_CLASS = 16
VERSION = 1  # bump when the synthesis changes, so that old caches are not reused


@dataclass(frozen=True)
class ClipSpec:
    voice: str
    label: int
    word: str  # "" for silence
    rate: float  # flite duration_stretch, or espeak-ng words per minute
    speed: float  # sox speed factor (tempo and pitch together)
    pitch_cents: int  # sox pitch shift
    reverb: int  # sox reverberance 0..100, 0: none
    level_db: float  # peak level of the speech, dBFS
    snr_db: float  # speech peak to noise RMS; inf: no noise
    noise: str  # "white", "pink" or "brown"
    offset: float  # where the word sits in the 1 s window, 0..1
    seed: int  # for the noise samples


def voices(split: str) -> tuple[str, ...]:
    if split == "train":
        return TRAIN_VOICES
    if split == "test":
        return TEST_VOICES
    raise PluginError(f"unknown speech_kws split {split!r}; one of train, test")


def make_plan(split: str, seed: int = 0) -> list[ClipSpec]:
    """All clips of a split, in a fixed order, every random choice drawn from `seed`."""
    split_salt = {"train": 1, "test": 2}[split] if split in ("train", "test") else 0
    rng = np.random.default_rng([seed, split_salt])
    plan = []
    for voice in voices(split):
        flite = voice.startswith("flite:")
        for label, name in enumerate(CLASSES):
            count = CLIPS_PER_CLASS[split]
            if flite and split == "train":
                count = FLITE_TRAIN_CLIPS_PER_CLASS
            for _ in range(count):
                if label == UNKNOWN:
                    word = str(rng.choice(UNKNOWN_WORDS))
                elif label == SILENCE:
                    word = ""
                else:
                    word = name
                rate = float(rng.uniform(0.8, 1.25)) if flite else float(rng.integers(120, 221))
                noisy = label == SILENCE or rng.random() < 0.8
                plan.append(
                    ClipSpec(
                        voice=voice,
                        label=label,
                        word=word,
                        rate=round(rate, 3),
                        speed=round(float(rng.uniform(0.88, 1.12)), 3),
                        pitch_cents=int(rng.integers(-250, 251)),
                        reverb=int(rng.choice([0, 0, int(rng.integers(10, 80))])),
                        level_db=round(float(rng.uniform(-24, -1)), 2),
                        snr_db=round(float(rng.uniform(5, 35)), 2) if noisy else float("inf"),
                        noise=str(rng.choice(["white", "pink", "brown"])),
                        offset=round(float(rng.random()), 4),
                        seed=int(rng.integers(2**31)),
                    )
                )
    return plan


def check_tools() -> None:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        raise PluginError(
            f"speech_kws needs {', '.join(missing)} to synthesize its clips; {INSTALL_HINT}"
        )


def _run(cmd: list[str], stdin: bytes | None = None) -> bytes:
    try:
        done = subprocess.run(cmd, input=stdin, capture_output=True, check=False, timeout=60)
    except OSError as exc:
        raise PluginError(f"speech_kws: cannot run {cmd[0]} ({exc}); {INSTALL_HINT}") from exc
    if done.returncode != 0:
        raise PluginError(
            f"speech_kws: {' '.join(cmd)} failed (exit {done.returncode}): "
            f"{done.stderr.decode(errors='replace').strip()[-300:]}"
        )
    return done.stdout


def _speak(spec: ClipSpec, tmp: Path) -> bytes:
    """The word as a WAV file's bytes, at the synthesizer's own sample rate."""
    engine, voice = spec.voice.split(":", 1)
    if engine == "flite":
        out = tmp / "word.wav"
        stretch = f"duration_stretch={spec.rate}"
        _run(["flite", "-voice", voice, "--setf", stretch, "-t", spec.word, "-o", str(out)])
        return out.read_bytes()
    return _run(["espeak-ng", "-v", voice, "-s", str(int(spec.rate)), "--stdout", spec.word])


def _noise(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    white = rng.standard_normal(n)
    if kind == "white":
        noise = white
    elif kind == "brown":
        noise = np.cumsum(white)
        noise -= np.linspace(noise[0], noise[-1], n)  # no drift across the clip
    else:  # pink: white noise shaped by 1/sqrt(f) in the frequency domain
        spectrum = np.fft.rfft(white)
        spectrum /= np.sqrt(np.maximum(np.arange(len(spectrum)), 1))
        noise = np.fft.irfft(spectrum, n)
    return noise / (np.sqrt(np.mean(noise**2)) + 1e-12)


def _place(speech: np.ndarray, spec: ClipSpec) -> np.ndarray:
    """Trim silence, crop or pad to 1 s at the planned offset, scale to the planned level."""
    clip = np.zeros(CLIP_SAMPLES)
    peak = np.abs(speech).max() if speech.size else 0.0
    if peak > 0:
        loud = np.flatnonzero(np.abs(speech) > 0.03 * peak)
        margin = SAMPLE_RATE // 50  # keep 20 ms either side
        speech = speech[max(loud[0] - margin, 0) : loud[-1] + margin]
        if len(speech) > CLIP_SAMPLES:  # keep the middle second
            start = (len(speech) - CLIP_SAMPLES) // 2
            speech = speech[start : start + CLIP_SAMPLES]
        start = round(spec.offset * (CLIP_SAMPLES - len(speech)))
        clip[start : start + len(speech)] = speech / peak * 10 ** (spec.level_db / 20)
    return clip


def render(spec: ClipSpec) -> np.ndarray:
    """One planned clip as int16 samples, shape (16000,)."""
    rng = np.random.default_rng(spec.seed)
    if spec.label == SILENCE:
        clip = np.zeros(CLIP_SAMPLES)
        noise_rms = 10 ** (spec.level_db / 20) / 4
    else:
        with tempfile.TemporaryDirectory(prefix="speech_kws-") as tmp:
            wav = _speak(spec, Path(tmp))
        effects = ["speed", str(spec.speed), "pitch", str(spec.pitch_cents)]
        if spec.reverb:
            effects += ["reverb", str(spec.reverb)]
        to_raw = ["-t", "raw", "-e", "signed", "-b", "16", "-c", "1", "-r", str(SAMPLE_RATE)]
        raw = _run(["sox", "-R", "-D", "-t", "wav", "-", *to_raw, "-", *effects], stdin=wav)
        speech = np.frombuffer(raw, dtype="<i2").astype(np.float64) / 32768
        clip = _place(speech, spec)
        noise_rms = 10 ** ((spec.level_db - spec.snr_db) / 20)
    if np.isfinite(spec.snr_db):
        clip = clip + noise_rms * _noise(spec.noise, CLIP_SAMPLES, rng)
    return np.clip(np.round(clip * 32768), -32768, 32767).astype(np.int16)


def render_all(plan: list[ClipSpec], workers: int = 2, progress: bool = True) -> np.ndarray:
    """All clips of a plan, (N, 1, 16000) int16, at most `workers` subprocesses at a time."""
    check_tools()
    from tqdm import tqdm

    out = np.zeros((len(plan), 1, CLIP_SAMPLES), dtype=np.int16)
    with ThreadPoolExecutor(max_workers=max(1, min(workers, 2))) as pool:
        clips = pool.map(render, plan)
        for i, clip in enumerate(
            tqdm(clips, total=len(plan), desc="synthesizing", unit="clip", disable=not progress)
        ):
            out[i, 0] = clip
    return out


def plan_key(split: str, seed: int) -> str:
    settings = {
        "version": VERSION,
        "split": split,
        "seed": seed,
        "voices": voices(split),
        "classes": CLASSES,
        "unknown": UNKNOWN_WORDS,
        "per_class": CLIPS_PER_CLASS[split],
        "flite_train_per_class": FLITE_TRAIN_CLIPS_PER_CLASS,
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def cache_path(split: str, seed: int = 0) -> Path:
    return cache_dir("speech_kws") / f"{split}-seed{seed}-{plan_key(split, seed)}.npz"


def generate(split: str, seed: int = 0, progress: bool = True) -> Path:
    """Synthesize a split into its cache file unless it is there already; return the path."""
    path = cache_path(split, seed)
    if path.is_file():
        return path
    plan = make_plan(split, seed)
    inputs = render_all(plan, progress=progress)
    labels = np.array([s.label for s in plan], dtype=np.int64)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npz")
    np.savez_compressed(
        tmp,
        inputs=inputs,
        labels=labels,
        voices=np.array([s.voice for s in plan]),
        words=np.array([s.word for s in plan]),
        plan=np.array(json.dumps([asdict(s) for s in plan])),
    )
    os.replace(tmp, path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m plugins.speech_kws.synth", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--split", choices=["train", "test", "both"], default="both")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for split in ["train", "test"] if args.split == "both" else [args.split]:
        started = time.monotonic()
        existed = cache_path(split, args.seed).is_file()
        path = generate(split, args.seed)
        n = len(make_plan(split, args.seed))
        how = "cached already" if existed else f"in {time.monotonic() - started:.1f} s"
        print(f"{split}: {n} clips, {len(voices(split))} voices, {path} ({how})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
