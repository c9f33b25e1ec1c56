"""Speech rendering with espeak-ng, word by word, cached on disk.

Words are rendered one at a time and trimmed, so every word's start and end sample is known
exactly: targets can be placed at the right micro-turn and scorers know when a user word ended.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from microturn.gym.layout import SAMPLE_RATE

# User voices: espeak-ng voices and variants that ship with the Debian package (no mbrola).
USER_VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-029", "en-us+f3", "en-gb-x-rp", "en-us+m3", "en-gb+f2")
USER_RATES = (140, 160, 180)
USER_PITCHES = (35, 50, 70)


@dataclass(frozen=True)
class Voice:
    """An espeak-ng voice with rate (words per minute) and pitch (0-99)."""

    name: str = "en-us"
    rate: int = 170
    pitch: int = 50

    def key(self) -> str:
        return f"{self.name}|{self.rate}|{self.pitch}"


# The fixed "model voice" every target utterance is rendered with.
MODEL_VOICE = Voice("en-us+m1", 175, 45)


@dataclass(frozen=True)
class Word:
    """A word placed in a track: its text and the sample span it occupies."""

    text: str
    start: int
    end: int


def cache_dir() -> Path:
    return Path(os.environ.get("MICROTURN_CACHE_DIR", ".state/cache")) / "speech"


def _require_binaries() -> None:
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            raise RuntimeError(
                f"{tool} is not installed; the gym renders speech with espeak-ng and sox "
                "(make system-deps, or apt-get install espeak-ng sox)"
            )


def _trim(pcm: np.ndarray, threshold: int = 40) -> np.ndarray:
    """Cut leading/trailing silence so a word's span is where its sound is."""
    loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > threshold)
    if loud.size == 0:
        return pcm[:0]
    return pcm[max(0, loud[0] - 160) : loud[-1] + 160]


@cache
def _espeak_version() -> str:
    """Part of the cache key: another espeak-ng build may render differently."""
    _require_binaries()
    return subprocess.run(
        ["espeak-ng", "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()


def render_word(word: str, voice: Voice) -> np.ndarray:
    """One word as int16 PCM at 16 kHz, trimmed; cached on disk by (espeak-ng version, word, voice)."""
    if not word or any(c in word for c in "\n\r\0"):
        raise ValueError(f"cannot render word {word!r}")
    digest = hashlib.sha1(f"{_espeak_version()}|{voice.key()}|{word}".encode()).hexdigest()[:20]
    path = cache_dir() / f"{digest}.npy"
    if path.exists():
        return np.load(path)
    _require_binaries()
    espeak = subprocess.run(
        ["espeak-ng", "-v", voice.name, "-s", str(voice.rate), "-p", str(voice.pitch), "--stdout", word],
        capture_output=True,
        check=True,
    )
    sox = subprocess.run(
        [
            "sox",
            "-t",
            "wav",
            "-",
            "-r",
            str(SAMPLE_RATE),
            "-b",
            "16",
            "-c",
            "1",
            "-e",
            "signed",
            "-t",
            "raw",
            "-",
        ],
        input=espeak.stdout,
        capture_output=True,
        check=True,
    )
    pcm = _trim(np.frombuffer(sox.stdout, dtype="<i2").astype(np.int16))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, pcm)
    os.replace(tmp, path)
    return pcm


def place_words(track: np.ndarray, words: list[str], start: int, voice: Voice, gap: int = 1200) -> list[Word]:
    """Mix ``words`` into ``track`` (in place) from sample ``start``, ``gap`` samples apart.

    Returns each word's span; words that would run past the end of the track are cut off there.
    """
    placed: list[Word] = []
    at = start
    for text in words:
        pcm = render_word(text, voice)
        end = min(at + len(pcm), len(track))
        if at >= len(track):
            break
        mixed = track[at:end].astype(np.int32) + pcm[: end - at]
        track[at:end] = np.clip(mixed, -32768, 32767).astype(np.int16)
        placed.append(Word(text, at, end))
        at = end + gap
    return placed


def words_duration(words: list[str], voice: Voice, gap: int = 1200) -> int:
    """Samples that ``place_words`` would use for ``words`` (without the trailing gap)."""
    lengths = [len(render_word(w, voice)) for w in words]
    return sum(lengths) + gap * max(0, len(lengths) - 1)
