"""The callers' speech, rendered once per run: espeak-ng speaks a turn's ``say`` text, sox turns it
(or a turn's WAV file) into 48 kHz mono int16, and the leading and trailing silence is cut here so
the user's END OF SPEECH is an exact sample index: the turn latency is measured from it.

Prompts are plain arrays (they pickle to the worker processes) and are cached by text."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from loadtest.scenario import Scenario, Turn

RATE = 48_000
# A sample this loud (0.5 % of full scale, sox's usual silence threshold) is speech; quieter ones at
# either end are cut.
SILENCE_THRESHOLD = int(0.005 * 32767)
VOICE = "en-us"
WORDS_PER_MINUTE = 150


class PromptError(RuntimeError):
    """Speech could not be rendered (espeak-ng or sox missing or failing, an unreadable WAV)."""


@dataclass(frozen=True)
class Prompt:
    """One utterance as the microphone plays it: speech from sample 0 to ``speech_end``."""

    key: str
    pcm: np.ndarray  # int16, 48 kHz mono
    speech_end: int  # sample index just past the last speech sample (== len(pcm) once trimmed)

    @property
    def speech_s(self) -> float:
        return self.speech_end / RATE


def missing_tools() -> list[str]:
    """The binaries rendering needs that are not on PATH."""
    return [t for t in ("espeak-ng", "sox") if shutil.which(t) is None]


def turn_key(turn: Turn) -> str:
    """The cache key of a spoken turn's audio ("say:..." or "audio:/abs/path.wav")."""
    if turn.say is not None:
        return f"say:{turn.say}"
    if turn.audio is not None:
        return f"audio:{turn.audio.resolve()}"
    raise ValueError("a typed turn has no prompt audio")


def trim(pcm: np.ndarray, threshold: int = SILENCE_THRESHOLD) -> np.ndarray:
    """``pcm`` from its first to its last sample louder than ``threshold``; empty if none is."""
    loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > threshold)
    if loud.size == 0:
        return pcm[:0]
    return pcm[loud[0] : loud[-1] + 1]


def read_wav(path: Path) -> np.ndarray:
    """A 16-bit mono WAV at RATE (what ``_to_mic_format`` writes) as int16 samples."""
    with wave.open(str(path), "rb") as w:
        if (w.getframerate(), w.getnchannels(), w.getsampwidth()) != (RATE, 1, 2):
            raise PromptError(f"{path}: expected {RATE} Hz mono 16-bit")
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.int16)


def write_wav(pcm: np.ndarray, path: Path, lead_s: float = 0.0, tail_s: float = 0.0) -> None:
    """Write int16 48 kHz mono with digital silence around it (a browser's fake-mic file)."""
    pad = lambda s: np.zeros(round(s * RATE), np.int16)  # noqa: E731
    data = np.concatenate([pad(lead_s), pcm.astype(np.int16), pad(tail_s)])
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(data.astype("<i2").tobytes())


def _run(cmd: list[str]) -> None:
    try:
        subprocess.run(cmd, check=True, timeout=60, capture_output=True)
    except FileNotFoundError:
        raise PromptError(f"{cmd[0]} is not installed (apt-get install espeak-ng sox)") from None
    except subprocess.CalledProcessError as exc:
        err = exc.stderr.decode(errors="replace")[:300]
        raise PromptError(f"{cmd[0]} failed ({exc.returncode}): {err}") from None
    except subprocess.TimeoutExpired:
        raise PromptError(f"{cmd[0]} took over 60 s") from None


def _to_mic_format(src: Path, dst: Path) -> np.ndarray:
    _run(["sox", str(src), "-r", str(RATE), "-c", "1", "-b", "16", "-e", "signed-integer", str(dst)])
    return read_wav(dst)


def _finish(key: str, pcm: np.ndarray) -> Prompt:
    speech = trim(pcm)
    if speech.size == 0:
        raise PromptError(f"{key}: no speech in the audio (every sample under the silence threshold)")
    return Prompt(key, np.ascontiguousarray(speech, dtype=np.int16), int(speech.size))


_cache: dict[str, Prompt] = {}


def speak(text: str) -> Prompt:
    """``text`` spoken by espeak-ng, trimmed; cached per process."""
    key = f"say:{text}"
    if key not in _cache:
        with tempfile.TemporaryDirectory(prefix="microturn-prompt-") as d:
            raw, out = Path(d) / "raw.wav", Path(d) / "out.wav"
            _run(["espeak-ng", "-v", VOICE, "-s", str(WORDS_PER_MINUTE), "-w", str(raw), text])
            _cache[key] = _finish(key, _to_mic_format(raw, out))
    return _cache[key]


def load_audio(path: Path) -> Prompt:
    """A WAV file converted to the mic's format by sox, trimmed; cached per process."""
    key = f"audio:{path.resolve()}"
    if key not in _cache:
        if not path.is_file():
            raise PromptError(f"no such audio file: {path}")
        with tempfile.TemporaryDirectory(prefix="microturn-prompt-") as d:
            _cache[key] = _finish(key, _to_mic_format(path, Path(d) / "out.wav"))
    return _cache[key]


def render(turn: Turn) -> Prompt:
    if turn.say is not None:
        return speak(turn.say)
    if turn.audio is not None:
        return load_audio(turn.audio)
    raise ValueError("a typed turn has no prompt audio")


def render_scenario(scenario: Scenario) -> dict[str, Prompt]:
    """Every spoken turn's prompt, by ``turn_key``: done once in the parent, shipped to workers."""
    return {turn_key(t): render(t) for t in scenario.turns if t.spoken}
