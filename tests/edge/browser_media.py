"""Helpers for the headless-Chromium test: the fake-mic WAV, Chromium's flags, chunk energies."""

from __future__ import annotations

import shutil
import subprocess
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from loadtest.browser_caller import chromium_args as loadtest_chromium_args

CHROMIUM = "/usr/bin/chromium"
LEAD_S = 1.0  # silence before the speech in the fake-mic file
TAIL_S = 1.0  # and after it; Chromium loops the file, so speech runs are 2 s apart
SPEECH = "Hello microturn, one two three four"


@dataclass(frozen=True)
class SpeechWav:
    path: Path
    speech_s: float  # length of the spoken part
    total_s: float  # LEAD_S + speech_s + TAIL_S


def missing_tools() -> list[str]:
    return [t for t in ("espeak-ng", "sox") if shutil.which(t) is None] + (
        [] if Path(CHROMIUM).exists() else [CHROMIUM]
    )


def make_speech_wav(dirpath: Path) -> SpeechWav:
    """espeak-ng speech, trimmed of its own silences, padded with LEAD_S / TAIL_S of digital
    silence, as 48 kHz mono 16-bit WAV (what Chromium's fake audio capture reads)."""
    raw = dirpath / "speech_raw.wav"
    out = dirpath / "speech_48k.wav"
    subprocess.run(["espeak-ng", "-s", "150", "-w", str(raw), SPEECH], check=True, timeout=30)
    subprocess.run(
        ["sox", str(raw), "-r", "48000", "-c", "1", "-b", "16", str(out),
         "silence", "1", "0.02", "0.5%", "reverse", "silence", "1", "0.02", "0.5%", "reverse",
         "pad", str(LEAD_S), str(TAIL_S)],
        check=True, timeout=30,
    )  # fmt: skip
    with wave.open(str(out), "rb") as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (48000, 1, 2)
        total = w.getnframes() / w.getframerate()
    return SpeechWav(out, total - LEAD_S - TAIL_S, total)


def chromium_args(wav: Path) -> list[str]:
    """The load generator's Chromium flags (DESIGN.md's), with the fake microphone reading ``wav``."""
    return [*loadtest_chromium_args(), f"--use-file-for-fake-audio-capture={wav}"]


def rms(pcm: np.ndarray) -> float:
    return float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2)))


def runs(mask: np.ndarray) -> list[tuple[bool, int, int]]:
    """Maximal runs of equal values: (value, start, length)."""
    out: list[tuple[bool, int, int]] = []
    start = 0
    for i in range(1, len(mask) + 1):
        if i == len(mask) or mask[i] != mask[start]:
            out.append((bool(mask[start]), start, i - start))
            start = i
    return out
