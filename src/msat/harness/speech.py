"""Spoken words: Google Speech Commands folders, WAV reading and resampling, and an offline
synthetic stand-in made with espeak-ng (for the demo and the tests; it does not reproduce
the paper's Table 6).

Speech Commands layout: ``root/<word>/<file>.wav`` (16-bit PCM mono, 16 kHz, about 1 s),
``root/validation_list.txt`` and ``root/testing_list.txt`` (paths relative to ``root``);
every other file of a word folder is training data. ``_background_noise_`` is not a word.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import subprocess
import wave
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

SPEECH_COMMANDS_10 = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
SPEECH_COMMANDS_35 = ("backward", "bed", "bird", "cat", "dog", "down", "eight", "five", "follow", "forward", "four",
                      "go", "happy", "house", "learn", "left", "marvin", "nine", "no", "off", "on", "one", "right",
                      "seven", "sheila", "six", "stop", "three", "tree", "two", "up", "visual", "wow", "yes", "zero")
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SPLIT_LISTS = ("validation_list.txt", "testing_list.txt")
SAMPLE_RATE = 16000


class SpeechDataError(ValueError):
    """A speech file or folder cannot be used; the message names it."""


def read_wav(path: str | os.PathLike, expected_rate: Optional[int] = SAMPLE_RATE) -> tuple[torch.Tensor, int]:
    """A 16-bit PCM mono WAV as float samples in [-1, 1) and its sample rate."""
    try:
        with wave.open(str(path), "rb") as w:
            channels, width, rate, n = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            if w.getcomptype() != "NONE" or width != 2 or channels != 1:
                raise SpeechDataError(f"{path}: needs 16-bit PCM mono audio, found {channels} channel(s), "
                                      f"{8 * width}-bit, compression {w.getcomptype()!r}; convert it, e.g. "
                                      f"`sox in.wav -b 16 -c 1 out.wav`")
            raw = w.readframes(n)
    except (wave.Error, EOFError) as exc:
        raise SpeechDataError(f"{path}: not a readable WAV file ({exc})") from exc
    if expected_rate is not None and rate != expected_rate:
        raise SpeechDataError(f"{path}: sample rate {rate} Hz, expected {expected_rate} Hz; resample the file or "
                              f"set dataset.resample=true")
    x = torch.frombuffer(bytearray(raw), dtype=torch.int16).float() / 32768.0
    return x, rate


def write_wav(path: str | os.PathLike, x: torch.Tensor, rate: int = SAMPLE_RATE) -> None:
    pcm = (x.clamp(-1.0, 32767 / 32768) * 32768.0).round().to(torch.int16)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.numpy().tobytes())


def resample(x: torch.Tensor, rate_in: int, rate_out: int, taps: int = 32) -> torch.Tensor:
    """Band-limited resampling by a Hann-windowed sinc kernel (``taps`` zero crossings a side)."""
    if rate_in == rate_out:
        return x
    g = math.gcd(rate_in, rate_out)
    up, down = rate_out // g, rate_in // g
    cutoff = min(1.0, up / down) * 0.97  # of the lower Nyquist frequency
    n_out = int(math.ceil(len(x) * up / down))
    t = torch.arange(n_out, dtype=torch.float64) * down / up  # output instants, in input samples
    width = taps / cutoff
    offsets = torch.arange(-math.ceil(width), math.ceil(width) + 1, dtype=torch.float64)
    idx = t.floor().unsqueeze(1) + offsets  # [n_out, K] input sample indices
    dist = t.unsqueeze(1) - idx
    kernel = cutoff * torch.sinc(cutoff * dist) * torch.where(dist.abs() <= width,
                                                              0.5 + 0.5 * torch.cos(math.pi * dist / width), 0.0)
    valid = (idx >= 0) & (idx < len(x))
    samples = x.double()[idx.clamp(0, len(x) - 1).long()] * valid
    return (samples * kernel).sum(1).to(x.dtype)


def fit_length(x: torch.Tensor, n: int) -> torch.Tensor:
    """Pad with zeros or cut to exactly ``n`` samples (centred cut, as clips are ~1 s)."""
    if len(x) >= n:
        start = (len(x) - n) // 2
        return x[start:start + n]
    return F.pad(x, (0, n - len(x)))


def speech_folder_samples(root: Path, words: Sequence[str]) -> dict[str, list[tuple[str, int]]]:
    """(path, label) lists of the train, validation and test splits of a Speech Commands tree."""
    if not root.is_dir():
        raise SpeechDataError(f"speech commands: dataset root {str(root)!r} does not exist")
    missing = [f for f in SPLIT_LISTS if not (root / f).is_file()]
    if missing:
        raise SpeechDataError(f"speech commands: {root} has no {' or '.join(missing)}; the standard layout has "
                              f"<word>/<file>.wav and the split lists validation_list.txt and testing_list.txt")
    absent = [w for w in words if not (root / w).is_dir()]
    if absent:
        raise SpeechDataError(f"speech commands: word folders {absent} are missing under {root}")
    listed = {name: {line.strip() for line in (root / name).read_text().splitlines() if line.strip()}
              for name in SPLIT_LISTS}
    splits: dict[str, list[tuple[str, int]]] = {"train": [], "validation": [], "test": []}
    for label, word in enumerate(words):
        for f in sorted(os.listdir(root / word)):
            if not f.lower().endswith(".wav"):
                continue
            rel = f"{word}/{f}"
            split = "validation" if rel in listed["validation_list.txt"] else \
                "test" if rel in listed["testing_list.txt"] else "train"
            splits[split].append((str(root / rel), label))
    for name, items in splits.items():
        if not items:
            raise SpeechDataError(f"speech commands: the {name} split under {root} is empty")
    return splits


class WaveformFiles(Dataset):
    """Waveforms ``[1, length]`` read from WAV files, optionally resampled."""

    def __init__(self, samples: Sequence[tuple[str, int]], length: int, sample_rate: int = SAMPLE_RATE,
                 resample_input: bool = False, cache: bool = True):
        self.samples = list(samples)
        self.length, self.rate, self.resample_input = int(length), int(sample_rate), bool(resample_input)
        self._cache: Optional[dict[int, torch.Tensor]] = {} if cache else None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        if self._cache is not None and i in self._cache:
            return self._cache[i], label
        x, rate = read_wav(path, None if self.resample_input else self.rate)
        if rate != self.rate:
            x = resample(x, rate, self.rate)
        x = fit_length(x, self.length).unsqueeze(0)
        if self._cache is not None:
            self._cache[i] = x
        return x, label


# ----------------------------------------------------------------- the synthetic stand-in
def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def make_synthetic_words(root: str | os.PathLike, words: Sequence[str] = DIGIT_WORDS, seed: int = 0,
                         voices: Sequence[str] = ("en", "en-us", "en-gb-x-rp", "en-029", "en-gb-scotland"),
                         variants: Sequence[str] = ("", "+m3", "+f2", "+f4"),
                         speeds: Sequence[int] = (120, 150, 180), pitches: Sequence[int] = (30, 50, 70),
                         noise: float = 0.005, test_every: int = 10, validation_every: int = 10) -> Path:
    """Write a synthetic spoken-word set in the Speech Commands layout (16 kHz, 1 s, 16-bit).

    Every word is spoken by espeak-ng in every voice, variant, speed and pitch, with a little
    seeded Gaussian noise and a random shift in the 1 s window. Reproducible: the same
    arguments give the same files. Returns ``root``."""
    if not espeak_available():
        raise SpeechDataError("the synthetic spoken-word set needs espeak-ng: apt-get install espeak-ng")
    root = Path(root)
    done = root / ".complete"
    if done.exists():
        return root
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    val, test, k = [], [], 0
    for word in words:
        for voice in voices:
            for var in variants:
                for speed in speeds:
                    for pitch in pitches:
                        wav = subprocess.run(["espeak-ng", "-v", voice + var, "-s", str(speed), "-p", str(pitch),
                                              "--stdout", word], capture_output=True, check=True).stdout
                        x = _decode_wav_bytes(wav)
                        x = fit_length(x, SAMPLE_RATE)
                        x = torch.roll(x, rng.randint(-1600, 1600)) + noise * torch.randn(len(x), generator=gen)
                        name = f"{voice.replace('-', '')}{var.replace('+', '_')}_s{speed}_p{pitch}.wav"
                        write_wav(tmp / word / name, x)
                        rel = f"{word}/{name}"
                        k += 1
                        if k % test_every == 0:
                            test.append(rel)
                        elif k % validation_every == 1:
                            val.append(rel)
    (tmp / "validation_list.txt").write_text("\n".join(val) + "\n")
    (tmp / "testing_list.txt").write_text("\n".join(test) + "\n")
    (tmp / "README.txt").write_text("SYNTHETIC speech (espeak-ng), Speech Commands layout. It stands in for Speech "
                                    "Commands in demos and tests; it does not reproduce the paper's Table 6.\n")
    shutil.rmtree(root, ignore_errors=True)
    os.replace(tmp, root)
    done.write_text(f"seed={seed}\n")
    return root


def _decode_wav_bytes(data: bytes) -> torch.Tensor:
    import io

    with wave.open(io.BytesIO(data), "rb") as w:
        rate, n = w.getframerate(), w.getnframes()
        raw = w.readframes(n)
    x = torch.frombuffer(bytearray(raw), dtype=torch.int16).float() / 32768.0
    return resample(x, rate, SAMPLE_RATE)
