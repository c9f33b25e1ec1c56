"""The outgoing audio track: the model's speech, paced as 20 ms frames from a small jitter buffer.

Output chunks arrive as 200 ms bursts; ``recv`` (called by aiortc's sender) hands out 20 ms frames
on a fixed schedule computed from the track's start, so timestamps never drift however late a
call comes. An empty buffer plays silence (an underrun); a buffer above ``max_ms`` drops its
oldest audio so the model's voice never lags far behind.
"""

from __future__ import annotations

import asyncio
import fractions
import time

import av
from aiortc import MediaStreamTrack


class PlayoutTrack(MediaStreamTrack):
    kind = "audio"

    def __init__(self, sample_rate: int = 16_000, frame_ms: int = 20, max_ms: int = 600) -> None:
        super().__init__()
        self.sample_rate = sample_rate
        self.frame_samples = sample_rate * frame_ms // 1000
        self.frame_s = frame_ms / 1000
        self.max_bytes = sample_rate * max_ms // 1000 * 2
        self._buf = bytearray()
        self._start: float | None = None
        self._index = 0
        self._time_base = fractions.Fraction(1, sample_rate)
        self.underruns = 0
        self.dropped_bytes = 0
        self.lateness_s: list[float] = []  # how late each frame left vs its schedule (for the benchmark)

    def push(self, pcm_s16le: bytes) -> None:
        self._buf += pcm_s16le
        over = len(self._buf) - self.max_bytes
        if over > 0:
            over += over % 2
            del self._buf[:over]
            self.dropped_bytes += over

    @property
    def buffered_ms(self) -> float:
        return len(self._buf) / 2 / self.sample_rate * 1000

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            from aiortc.mediastreams import MediaStreamError

            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        due = self._start + self._index * self.frame_s
        wait = due - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        self.lateness_s.append(max(0.0, time.monotonic() - due))
        if len(self.lateness_s) > 10_000:
            del self.lateness_s[:5000]
        n = self.frame_samples * 2
        if len(self._buf) >= n:
            data = bytes(self._buf[:n])
            del self._buf[:n]
        else:
            if self._index > 0:
                self.underruns += 1
            data = bytes(self._buf) + bytes(n - len(self._buf))
            self._buf.clear()
        frame = av.AudioFrame(format="s16", layout="mono", samples=self.frame_samples)
        frame.planes[0].update(data)
        frame.sample_rate = self.sample_rate
        frame.pts = self._index * self.frame_samples
        frame.time_base = self._time_base
        self._index += 1
        return frame
