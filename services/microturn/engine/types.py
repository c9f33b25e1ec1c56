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
class ChunkOutput:
    session_id: str
    chunk_index: int
    pcm: np.ndarray  # int16 [samples_per_chunk]
    text: str  # what the model said this micro-turn (its inner transcript)
    events: list[EngineEvent]
    model_version: str


class EngineError(ValueError):
    """Base class of engine errors."""


class EngineFullError(EngineError):
    """No free session slot."""


class UnknownSessionError(EngineError):
    """The session is not open on this engine (the caller should replay it)."""


class InvalidChunkError(EngineError):
    """A chunk is malformed; the session's slot was not touched."""
