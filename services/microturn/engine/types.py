"""Engine-facing data types: input/output chunks, events and errors; the scheduler/executor boundary."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from torch import Tensor


@dataclass
class ChunkInput:
    """200 ms of one session's input."""

    session_id: str
    chunk_index: int
    pcm: np.ndarray  # int16 [samples_per_chunk] (3200 = 200 ms at 16 kHz)
    video: np.ndarray | None = None  # uint8 [n_frames, H, W, 3]; the last frame is used
    text: list[str] = field(default_factory=list)  # typed text, queued into the text-in budget
    background: list[str] = field(default_factory=list)  # background updates (wrapped in <bg> markers)
    sample_rate: int = 16_000  # must equal the model's; lets a caller state what it sends


@dataclass
class DelegationOpened:
    """The model closed a delegation span; ``request`` is the text it wrote inside it."""

    request: str


@dataclass
class SpeakingChanged:
    speaking: bool


EngineEvent = DelegationOpened | SpeakingChanged


@dataclass
class ResumePoint:
    """What one live micro-turn fed back to the model and the small host state it ended in.

    Together with the input chunks of the last ``Engine.resume_span`` micro-turns, it lets any engine
    rebuild the session (``Engine.resume``) with one teacher-forced forward per micro-turn: with
    sliding-window attention over W turns in L layers, the KV ring depends only on the last L*W + 1
    turns, and everything else a session carries is in here.
    """

    text_in_ids: list[int]  # the text-in tokens read (PAD included), n_text_in of them
    text_out_ids: list[int]  # the text-out tokens written, n_text_out of them
    audio_out_levels: np.ndarray  # uint8 [n_audio_out * frames_per_audio_token * n_mels]
    queued_text_ids: list[int]  # text-in tokens still queued afterwards
    in_delegation: bool
    delegation: bytes
    speaking: bool
    decoder_pending: bytes  # an incomplete UTF-8 character of the text-out decoder
    vocoder_tail: np.ndarray  # float32 [vocoder tail_len]


@dataclass
class ChunkOutput:
    session_id: str
    chunk_index: int
    pcm: np.ndarray  # int16 [samples_per_chunk]
    text: str  # what the model said this micro-turn (its inner transcript)
    events: list[EngineEvent]
    model_version: str
    resume: ResumePoint


class EngineError(ValueError):
    """Base class of engine errors."""


class EngineFullError(EngineError):
    """No free session slot."""


class UnknownSessionError(EngineError):
    """The session is not open on this engine (the caller should replay it)."""


class InvalidChunkError(EngineError):
    """A chunk is malformed; the session's slot was not touched."""


# ---- the scheduler / executor boundary ---------------------------------------------------------------
@dataclass(frozen=True)
class ForcedTurn:
    """What a live micro-turn wrote (from its ``ResumePoint``): a teacher-forced step feeds it back."""

    text_out_ids: list[int]  # n_text_out ids
    audio_out_levels: np.ndarray  # uint8 [n_audio_out * frames_per_audio_token * n_mels]


@dataclass(frozen=True)
class StepPlan:
    """One batched micro-turn as the scheduler decided it, one entry per session in the step's order.

    The scheduler knows sessions, chunk indices and queues; it knows nothing of rows, KV layout or ring
    indices (the executor derives those from ``slots`` and the chunk indices). ``forced`` set: a
    teacher-forced rebuild turn (nothing sampled or vocoded; only the KV of the first ``kv_layers``
    layers is written)."""

    slots: list[int]
    chunk_index: list[int]
    prev_index: list[int | None]  # the session's last processed chunk index (None: its first chunk)
    seeds: list[int]  # sampling seed of this micro-turn (``step_seed``); unused when forced
    pcm: list[np.ndarray]  # int16 [samples_per_chunk]
    video: list[np.ndarray | None]  # uint8 [H, W, 3]: the chunk's last frame, or None
    text_in: list[list[int]]  # exactly n_text_in ids (PAD-filled)
    forced: list[ForcedTurn] | None = None
    kv_layers: int | None = None

    def __len__(self) -> int:
        return len(self.slots)


@dataclass(frozen=True)
class StepResult:
    """What a live step produced, per session in the plan's order (empty lists for a forced step)."""

    text_ids: list[list[int]]  # n_text_out sampled text-out ids
    pcm: list[np.ndarray]  # int16 [samples_per_chunk] (fresh copies the caller owns)
    energy: list[float]  # mean log-mel of the generated audio (the speaking detector's input)
    audio_out_levels: list[np.ndarray]  # uint8, what the model fed back to itself
    vocoder_tail: list[np.ndarray]  # float32 [tail_len], the vocoder state the turn ended in

    @classmethod
    def empty(cls) -> StepResult:
        return cls([], [], [], [], [])


class StepObserver(Protocol):
    """Instrumentation of a live step (tests compare the streamed intermediates with the full forward).
    Observing costs copies; an engine without an observer does none of this work."""

    def tensor(self, name: str, value: Tensor) -> None:
        """A named intermediate, rows in the plan's session order (a copy the observer may keep):
        ``hidden_pre`` [n, P, d], ``logits{j}`` [n, V], ``cond{j}`` [n, d]."""
        ...

    def step_done(self, plan: StepPlan, result: StepResult) -> None:
        """The step finished (its intermediates were reported before)."""
        ...
