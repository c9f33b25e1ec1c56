"""A Python WebRTC client of the edge (aiortc): synthetic mic and camera, the events data channel,
and a sink that records the audio coming back."""

from __future__ import annotations

import asyncio
import fractions
import json
import math
import time

import av
import httpx
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
    VideoStreamTrack,
)

TONE_ON_S = 1.0  # the synthetic mic alternates 1 s of tone and 1 s of silence


class ToneTrack(MediaStreamTrack):
    """48 kHz mono mic: a 440 Hz tone for TONE_ON_S, then silence for as long, repeating."""

    kind = "audio"
    rate = 48_000
    samples = 960  # 20 ms

    def __init__(self) -> None:
        super().__init__()
        self._i = 0
        self._start: float | None = None

    async def recv(self) -> av.AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        wait = self._start + self._i * 0.02 - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        n0 = self._i * self.samples
        t = (n0 + np.arange(self.samples)) / self.rate
        on = (t // TONE_ON_S) % 2 == 0
        pcm = np.where(on, 8000 * np.sin(2 * math.pi * 440 * t), 0).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.rate
        frame.pts = n0
        frame.time_base = fractions.Fraction(1, self.rate)
        self._i += 1
        return frame


class PatternTrack(VideoStreamTrack):
    """A 160x120 camera showing a square that moves every frame."""

    def __init__(self) -> None:
        super().__init__()
        self._n = 0

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        img = np.zeros((120, 160, 3), np.uint8)
        x = (self._n * 7) % 120
        img[40:80, x : x + 40] = (255, 200, 0)
        self._n += 1
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts, frame.time_base = pts, time_base
        return frame


class EdgeClient:
    def __init__(self, base_url: str, video: bool = True, audio: MediaStreamTrack | None = None) -> None:
        """``audio``: the microphone (default: ``ToneTrack``)."""
        self.http = httpx.AsyncClient(base_url=base_url, timeout=20)
        self.mic = audio if audio is not None else ToneTrack()
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.events: list[dict] = []
        self.event_times: list[float] = []  # time.monotonic() each event arrived
        self.audio_frames: list[av.AudioFrame] = []
        self.video = video
        self.session_id = ""
        self.token = ""
        self._sink: asyncio.Task[None] | None = None

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def connect(self) -> None:
        r = await self.http.post("/api/sessions")
        r.raise_for_status()
        info = r.json()
        self.session_id, self.token = info["session_id"], info["token"]
        self.channel = self.pc.createDataChannel("events")
        self.channel.on("message", self._on_event)
        self.pc.addTrack(self.mic)
        if self.video:
            self.pc.addTrack(PatternTrack())
        self.pc.on("track", self._on_track)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        r = await self.http.post(
            f"/api/sessions/{self.session_id}/offer",
            json={"sdp": self.pc.localDescription.sdp, "type": "offer"},
            headers=self.auth,
        )
        r.raise_for_status()
        await self.pc.setRemoteDescription(RTCSessionDescription(**r.json()))

    def _on_event(self, message: str) -> None:
        self.events.append(json.loads(message))
        self.event_times.append(time.monotonic())

    def chunk_arrivals(self) -> list[tuple[int, float]]:
        """(output chunk index, arrival time) of every chunk event so far."""
        return [
            (e["chunk"], t)
            for e, t in zip(self.events, self.event_times, strict=True)
            if e["type"] == "chunk"
        ]

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            self._sink = asyncio.ensure_future(self._drain(track))

    async def _drain(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                self.audio_frames.append(await track.recv())
            except Exception:
                return

    def send_text(self, text: str) -> None:
        self.channel.send(json.dumps({"type": "text", "text": text}))

    async def close(self) -> None:
        if self.session_id:
            await self.http.delete(f"/api/sessions/{self.session_id}", headers=self.auth)
        await self.pc.close()
        if self._sink is not None:
            self._sink.cancel()
        await self.http.aclose()
