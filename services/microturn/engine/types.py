"""Engine-facing data types: input/output chunks, events and errors."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


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
