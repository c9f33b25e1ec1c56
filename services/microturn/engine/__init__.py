"""The streaming engine: persistent session slots, one batched micro-turn per tick."""

from microturn.engine.engine import Engine, step_seed
from microturn.engine.types import (
    ChunkInput,
    ChunkOutput,
    DelegationOpened,
    EngineError,
    EngineEvent,
    EngineFullError,
    InvalidChunkError,
    ResumePoint,
    SpeakingChanged,
    UnknownSessionError,
)

__all__ = [
    "ChunkInput",
    "ChunkOutput",
    "DelegationOpened",
    "Engine",
    "EngineError",
    "EngineEvent",
    "EngineFullError",
    "InvalidChunkError",
    "ResumePoint",
    "SpeakingChanged",
    "UnknownSessionError",
    "step_seed",
]
