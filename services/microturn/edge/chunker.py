"""Cut incoming audio into 200 ms chunks on the shared wall-clock boundaries.

Audio arrives in network-paced frames; a timer cuts one chunk at each boundary (plus a few ms for
the last frame to land), so every session on every edge emits at the same instants. The first
chunk is padded at the front (the call started mid-chunk), a short chunk at the back (a late or
lost packet), and a backlog beyond ``max_backlog`` chunks (a sender clock running fast) is
trimmed from the oldest end so latency stays bounded.
"""

from __future__ import annotations

import numpy as np


class AudioChunker:
    def __init__(self, samples_per_chunk: int = 3200, max_backlog: int = 2) -> None:
        self.n = samples_per_chunk
        self.max_backlog = max_backlog
        self._parts: list[np.ndarray] = []
        self._size = 0
        self.padded = 0  # samples of silence inserted so far (lost/late audio)
        self.dropped = 0  # samples trimmed from an over-full backlog

    def push(self, pcm: np.ndarray) -> None:
        if pcm.dtype != np.int16 or pcm.ndim != 1:
            raise ValueError(f"expected mono int16 samples, got {pcm.dtype} {pcm.shape}")
        self._parts.append(pcm)
        self._size += pcm.size

    @property
    def buffered(self) -> int:
        return self._size

    def cut(self, first: bool = False) -> np.ndarray:
        """The next chunk: exactly ``samples_per_chunk`` samples."""
        data = np.concatenate(self._parts) if self._parts else np.zeros(0, np.int16)
        limit = self.n * (1 + self.max_backlog)
        if data.size > limit:
            self.dropped += data.size - limit
            data = data[-limit:]
        take = data[: self.n]
        rest = data[self.n :]
        self._parts = [rest] if rest.size else []
        self._size = rest.size
        if take.size < self.n:
            pad = np.zeros(self.n - take.size, np.int16)
            self.padded += pad.size
            take = np.concatenate([pad, take] if first else [take, pad])
        return take
