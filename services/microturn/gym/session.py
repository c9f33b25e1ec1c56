"""A synthetic session: time-aligned inputs, target outputs, and what the scorers need.

Everything is laid out in micro-turns: ``num_chunks`` chunks of 3200 samples and one frame each.
``training_chunks()`` turns a session into per-chunk training examples for the model.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from microturn.gym.layout import CHUNK_SAMPLES, FRAME_SIZE, sample_to_chunk
from microturn.gym.speech import MODEL_VOICE, USER_PITCHES, USER_RATES, USER_VOICES, Voice, Word, place_words
from microturn.gym.video import Scene

# Model words start this far into their chunk, so a recogniser's onset estimate stays in the chunk.
MODEL_ONSET_SAMPLES = 640
MODEL_WORD_GAP = 2400
USER_WORD_GAP = 1000
SPEECH_ACTIVITY_RMS = 100.0


@dataclass(frozen=True)
class TurnReply:
    """What an ideal turn-based model would answer to one user turn (used by the baseline only).

    ``trigger`` is "speech" (answer after the user's turn, spoken between ``start`` and ``end``
    chunks), "text" (typed text arriving in chunk ``start``, read by ``end``) or "background" (an
    update arriving in ``start``, read by ``end``).
    """

    trigger: str  # "speech" | "text" | "background"
    start: int
    end: int
    words: tuple[str, ...]
    delegate: str | None = None


@dataclass(frozen=True)
class TrainingChunk:
    """One micro-turn of a training example: inputs at chunk ``index`` and the targets for it."""

    index: int
    pcm_in: np.ndarray  # int16 [3200]
    video: np.ndarray  # uint8 [1, 80, 80, 3]
    text_in: list[str]  # typed text
    background_in: list[str]  # background updates (e.g. delegation results)
    text_out: str  # words whose speech starts in this chunk, each followed by a space
    pcm_out: np.ndarray  # int16 [3200], the model voice
    speaking: bool  # the target speech is audible in this chunk
    delegate: str | None  # open a delegation with this request in this chunk


@dataclass
class Session:
    family: str
    seed: int
    num_chunks: int
    pcm_in: np.ndarray  # int16 [num_chunks * 3200]
    video: np.ndarray  # uint8 [num_chunks, 1, 80, 80, 3]
    text_in: list[list[str]]
    background_in: list[list[str]]
    target_pcm: np.ndarray  # int16 [num_chunks * 3200]
    target_text: list[str]
    target_delegations: dict[int, str]
    user_words: list[Word]
    plan: list[TurnReply]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def session_id(self) -> str:
        return f"{self.family}-{self.seed}"

    def input_chunk(self, k: int) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
        """(pcm int16 [3200], video uint8 [1,80,80,3], typed text, background updates) of chunk ``k``."""
        if not 0 <= k < self.num_chunks:
            raise IndexError(f"chunk {k} outside session of {self.num_chunks} chunks")
        pcm = self.pcm_in[k * CHUNK_SAMPLES : (k + 1) * CHUNK_SAMPLES]
        return pcm, self.video[k], self.text_in[k], self.background_in[k]

    def target_speaking(self) -> np.ndarray:
        return speech_activity(self.target_pcm)

    def training_chunks(self) -> list[TrainingChunk]:
        speaking = self.target_speaking()
        out = []
        for k in range(self.num_chunks):
            pcm, video, text, background = self.input_chunk(k)
            out.append(
                TrainingChunk(
                    index=k,
                    pcm_in=pcm,
                    video=video,
                    text_in=list(text),
                    background_in=list(background),
                    text_out=self.target_text[k],
                    pcm_out=self.target_pcm[k * CHUNK_SAMPLES : (k + 1) * CHUNK_SAMPLES],
                    speaking=bool(speaking[k]),
                    delegate=self.target_delegations.get(k),
                )
            )
        return out

    def text_out_tokens(self, per_chunk: int) -> list[list[int]]:
        """The text-out targets as model token ids, ``per_chunk`` slots per micro-turn.

        The model spells text byte by byte, so a word rarely fits its onset micro-turn: each word
        ("word ") and each delegation span (``<deleg>`` request ``</deleg>``) joins a FIFO queue at
        its onset chunk and drains ``per_chunk`` tokens per micro-turn; empty slots are SIL. A
        delegation opens (the engine's event) in the chunk whose tokens hold its ``</deleg>``.
        """
        from microturn.model import tokens as tk

        if per_chunk < 1:
            raise ValueError(f"per_chunk must be >= 1, got {per_chunk}")
        queue: list[int] = []
        out = []
        for k in range(self.num_chunks):
            if k in self.target_delegations:
                queue += [tk.DELEG_START, *self.target_delegations[k].encode(), tk.DELEG_END]
            queue += list(self.target_text[k].encode())
            take, queue = queue[:per_chunk], queue[per_chunk:]
            out.append(take + [tk.SIL] * (per_chunk - len(take)))
        return out

    def arrays(self) -> dict[str, Any]:
        """The session as stacked arrays (chunk axis first), handy for batching in training."""
        return {
            "pcm_in": self.pcm_in.reshape(self.num_chunks, CHUNK_SAMPLES),
            "video": self.video,
            "text_in": [list(t) for t in self.text_in],
            "background_in": [list(t) for t in self.background_in],
            "text_out": list(self.target_text),
            "pcm_out": self.target_pcm.reshape(self.num_chunks, CHUNK_SAMPLES),
            "speaking": self.target_speaking(),
            "delegate": [self.target_delegations.get(k) for k in range(self.num_chunks)],
        }


def speech_activity(pcm: np.ndarray, frame: int = 800) -> np.ndarray:
    """Per-chunk bool: any 50 ms frame in the chunk is louder than a quiet room."""
    n = len(pcm) // CHUNK_SAMPLES
    frames = pcm[: n * CHUNK_SAMPLES].astype(np.float32).reshape(n, CHUNK_SAMPLES // frame, frame)
    rms = np.sqrt((frames**2).mean(axis=2))
    return (rms > SPEECH_ACTIVITY_RMS).any(axis=1)


def family_rng(family: str, seed: int) -> np.random.Generator:
    """Independent, stable random streams per (family, seed)."""
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    return np.random.default_rng([zlib.crc32(family.encode()), seed])


class SessionBuilder:
    """Assembles a session: user speech and text, model targets, video and the baseline's plan."""

    def __init__(self, family: str, seed: int, rng: np.random.Generator, max_chunks: int = 200) -> None:
        self.family, self.seed, self.rng = family, seed, rng
        self.max_chunks = max_chunks
        n = max_chunks * CHUNK_SAMPLES
        self.pcm_in = np.zeros(n, np.int16)
        self.target_pcm = np.zeros(n, np.int16)
        self.text_in: dict[int, list[str]] = {}
        self.background_in: dict[int, list[str]] = {}
        self.target_words: list[Word] = []
        self.delegations: dict[int, str] = {}
        self.user_words: list[Word] = []
        self.plan: list[TurnReply] = []
        self.voice = Voice(
            str(rng.choice(USER_VOICES)), int(rng.choice(USER_RATES)), int(rng.choice(USER_PITCHES))
        )
        self.snr_db = float(rng.uniform(15, 35))
        self.noise_kind = str(rng.choice(["white", "rumble", "hum"]))

    def user_say(self, words: list[str], start: int) -> list[Word]:
        """User speech from sample ``start``; returns the word spans."""
        placed = place_words(self.pcm_in, words, start, self.voice, gap=USER_WORD_GAP)
        if len(placed) != len(words):
            raise ValueError("user utterance runs past the session's maximum length")
        self.user_words += placed
        return placed

    def type_text(self, chunk: int, text: str) -> None:
        self.text_in.setdefault(chunk, []).append(text)

    def background_update(self, chunk: int, text: str) -> None:
        self.background_in.setdefault(chunk, []).append(text)

    def model_say(self, words: list[str], chunk: int) -> list[Word]:
        """Target speech in the model voice, first word starting in ``chunk``."""
        start = chunk * CHUNK_SAMPLES + MODEL_ONSET_SAMPLES
        if self.target_words and start < self.target_words[-1].end:
            raise ValueError(f"model utterance at chunk {chunk} overlaps the previous one")
        placed = place_words(self.target_pcm, words, start, MODEL_VOICE, gap=MODEL_WORD_GAP)
        self.target_words += placed
        return placed

    def delegate(self, chunk: int, request: str) -> None:
        self.delegations[chunk] = request

    def reply(
        self, trigger: str, start: int, end: int, words: list[str], delegate: str | None = None
    ) -> None:
        if trigger not in ("speech", "text", "background"):
            raise ValueError(f"trigger must be 'speech', 'text' or 'background', got {trigger!r}")
        self.plan.append(TurnReply(trigger, start, end, tuple(words), delegate))

    def cut_model_speech(self, at_sample: int) -> None:
        """Silence the target speech from ``at_sample`` on (with a 10 ms fade): the model yields."""
        fade = 160
        seg = self.target_pcm[at_sample - fade : at_sample].astype(np.float32)
        self.target_pcm[at_sample - fade : at_sample] = (seg * np.linspace(1, 0, fade)).astype(np.int16)
        self.target_pcm[at_sample:] = 0
        self.target_words = [w for w in self.target_words if w.start < at_sample]

    def _noise(self, n: int) -> np.ndarray:
        rms = 3000.0 / 10 ** (self.snr_db / 20)
        if self.noise_kind == "hum":
            t = np.arange(n) / 16000
            noise = np.sin(2 * np.pi * 100 * t) + 0.5 * np.sin(2 * np.pi * 200 * t)
            noise += self.rng.normal(0, 0.3, n)
        else:
            noise = self.rng.normal(0, 1, n)
            if self.noise_kind == "rumble":
                noise = np.convolve(noise, np.ones(16) / 16, mode="same")
        return noise / (np.sqrt((noise**2).mean()) + 1e-9) * rms

    def build(self, num_chunks: int, scene: Scene, meta: dict[str, Any]) -> Session:
        if not 0 < num_chunks <= self.max_chunks:
            raise ValueError(f"num_chunks must be in 1..{self.max_chunks}, got {num_chunks}")
        n = num_chunks * CHUNK_SAMPLES
        if any(w.end > n for w in self.user_words) or any(w.end > n for w in self.target_words):
            raise ValueError("speech runs past the end of the session")
        pcm_in = np.clip(self.pcm_in[:n].astype(np.float64) + self._noise(n), -32768, 32767).astype(np.int16)
        target_text = [""] * num_chunks
        for w in self.target_words:
            target_text[sample_to_chunk(w.start)] += w.text + " "
        video = scene.render(num_chunks)
        assert video.shape == (num_chunks, 1, FRAME_SIZE, FRAME_SIZE, 3)
        return Session(
            family=self.family,
            seed=self.seed,
            num_chunks=num_chunks,
            pcm_in=pcm_in,
            video=video,
            text_in=[list(self.text_in.get(k, [])) for k in range(num_chunks)],
            background_in=[list(self.background_in.get(k, [])) for k in range(num_chunks)],
            target_pcm=self.target_pcm[:n].copy(),
            target_text=target_text,
            target_delegations={k: r for k, r in self.delegations.items() if k < num_chunks},
            user_words=list(self.user_words),
            plan=list(self.plan),
            meta=meta,
        )
