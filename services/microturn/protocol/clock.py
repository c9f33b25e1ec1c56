"""The chunk clock: wall time ↔ micro-turn boundaries, chunk indices and lag.

Chunk k of a session covers ``[t0 + k*chunk_ms, t0 + (k+1)*chunk_ms)`` where the session origin
``t0`` is itself a multiple of ``chunk_ms``. Every edge and replica computes boundaries from the
same wall clock, so all sessions on a replica are phase-aligned and one tick serves them all.
Everything is integer milliseconds: no float drift over long sessions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

CHUNK_MS = 200


def now_unix_ms() -> int:
    return time.time_ns() // 1_000_000


def now_unix_us() -> int:
    return time.time_ns() // 1_000


@dataclass(frozen=True)
class ChunkClock:
    """Maps wall time (Unix ms) to chunk boundaries of length ``chunk_ms``."""

    chunk_ms: int = CHUNK_MS

    def __post_init__(self) -> None:
        if self.chunk_ms <= 0:
            raise ValueError(f"chunk_ms must be positive, got {self.chunk_ms}")

    def floor(self, t_ms: int) -> int:
        """The boundary at or before ``t_ms`` (start of the chunk that contains it)."""
        return t_ms - t_ms % self.chunk_ms

    def ceil(self, t_ms: int) -> int:
        """The boundary at or after ``t_ms``."""
        return -((-t_ms) // self.chunk_ms) * self.chunk_ms

    def next_boundary(self, t_ms: int) -> int:
        """The first boundary strictly after ``t_ms`` (when the current chunk ends)."""
        return self.floor(t_ms) + self.chunk_ms

    def origin(self, start_ms: int) -> int:
        """Session origin t0 for a session whose media starts at ``start_ms``: the boundary at or
        before it, so the first chunk is partial (padded) rather than shifted."""
        return self.floor(start_ms)

    def index(self, t0_ms: int, t_ms: int) -> int:
        """Index of the chunk of a session with origin ``t0_ms`` that contains ``t_ms``."""
        self._check_origin(t0_ms)
        return (t_ms - t0_ms) // self.chunk_ms

    def start(self, t0_ms: int, index: int) -> int:
        """Media start of chunk ``index``."""
        self._check_origin(t0_ms)
        return t0_ms + index * self.chunk_ms

    def end(self, t0_ms: int, index: int) -> int:
        return self.start(t0_ms, index) + self.chunk_ms

    def lag_ms(self, media_start_ms: int, now_ms: int) -> int:
        """How far wall time is past the end of a chunk's media: 0 when the chunk is processed the
        instant its media is complete, growing when a session falls behind."""
        return now_ms - (media_start_ms + self.chunk_ms)

    def _check_origin(self, t0_ms: int) -> None:
        if t0_ms % self.chunk_ms:
            raise ValueError(
                f"session origin {t0_ms} ms is not a multiple of the chunk length {self.chunk_ms} ms"
            )
