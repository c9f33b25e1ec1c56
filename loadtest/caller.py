"""One synthetic caller: what a browser does (POST /api/sessions, an offer, the "events" data channel,
a microphone, playout of the answer), with everything it sees recorded for the soak report.

The caller keeps only what the report needs (chunk indices and arrival times, counters, a few
messages), so a ten-minute call costs a few hundred KB."""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import math
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import av
import httpx
import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

MIC_RATE = 48_000
FRAME_SAMPLES = 960  # 20 ms, what a browser's Opus encoder takes
TONE_HZ = 440.0
ASK_MODES = ("typed+spoken", "typed", "spoken")  # an asker's questions cycle through these


class SyntheticMic(MediaStreamTrack):
    """A 48 kHz mono microphone paced in real time: a 1 s on / 1 s off tone (a user making sound)
    or faint noise, with queued utterances played instead while there are any."""

    kind = "audio"

    def __init__(self, tone: bool, seed: int) -> None:
        super().__init__()
        self.tone = tone
        self._rng = np.random.default_rng(seed)
        self._n = 0
        self._start: float | None = None
        self._speech: deque[np.ndarray] = deque()

    def say(self, pcm48: np.ndarray) -> None:
        """Queue an utterance (int16 at 48 kHz); it starts with the next 20 ms frame."""
        pad = (-len(pcm48)) % FRAME_SAMPLES
        frames = np.concatenate([pcm48.astype(np.int16), np.zeros(pad, np.int16)]).reshape(-1, FRAME_SAMPLES)
        self._speech.extend(frames)

    def _samples(self) -> np.ndarray:
        if self._speech:
            return self._speech.popleft()
        if self.tone:
            t = (self._n * FRAME_SAMPLES + np.arange(FRAME_SAMPLES)) / MIC_RATE
            on = (t // 1.0) % 2 == 0
            return np.where(on, 6000 * np.sin(2 * math.pi * TONE_HZ * t), 0).astype(np.int16)
        return self._rng.normal(0, 30, FRAME_SAMPLES).astype(np.int16)

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        wait = self._start + self._n * FRAME_SAMPLES / MIC_RATE - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        frame = av.AudioFrame.from_ndarray(self._samples().reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = MIC_RATE
        frame.pts = self._n * FRAME_SAMPLES
        frame.time_base = fractions.Fraction(1, MIC_RATE)
        self._n += 1
        return frame


def to_mic_rate(pcm16k: np.ndarray) -> np.ndarray:
    """16 kHz speech (what the gym renders) to the microphone's 48 kHz, by linear interpolation."""
    n = len(pcm16k)
    x = np.arange(n * 3) / 3.0
    return np.interp(x, np.arange(n), pcm16k.astype(np.float32)).astype(np.int16)


@dataclass
class Question:
    """Something a delegating caller asks: typed on the data channel, and spoken when a clip exists."""

    text: str
    clip48: np.ndarray | None = None


@dataclass
class CallLog:
    """Everything one call saw. Times are time.monotonic() seconds."""

    caller: int
    call: int
    delegator: bool
    planned_end: float
    session_id: str = ""
    dialed_at: float = 0.0
    first_chunk_at: float | None = None
    hangup_at: float | None = None
    ended_early: str = ""  # why the call ended before its planned end; "" if it did not
    hangup_status: int | None = None
    chunk_index: list[int] = field(default_factory=list)
    chunk_at: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    error_samples: list[str] = field(default_factory=list)
    states: list[tuple[float, str, str]] = field(default_factory=list)
    delegations: list[tuple[float, str, str]] = field(default_factory=list)  # (t, delegation_id, request)
    results: list[tuple[float, str, str]] = field(default_factory=list)  # (t, delegation_id, text)
    asks: list[tuple[float, str, str]] = field(default_factory=list)  # (t, question, how it was asked)
    cards: int = 0
    captions: int = 0
    audio_frames: int = 0
    model_versions: set[str] = field(default_factory=set)

    def on_event(self, event: dict[str, Any], at: float) -> None:
        kind = event.get("type")
        if kind == "chunk":
            self.chunk_index.append(int(event["chunk"]))
            self.chunk_at.append(at)
            if self.first_chunk_at is None:
                self.first_chunk_at = at
            self.model_versions.add(str(event.get("model_version", "")))
        elif kind == "caption":
            self.captions += 1
        elif kind == "error":
            code = str(event.get("code", "?"))
            self.errors[code] += 1
            if len(self.error_samples) < 5:
                self.error_samples.append(f"{code}: {str(event.get('message', ''))[:200]}")
        elif kind == "state":
            self.states.append((at, str(event.get("state")), str(event.get("detail", ""))))
        elif kind == "delegation":
            self.delegations.append((at, str(event.get("delegation_id")), str(event.get("request", ""))))
        elif kind == "background":
            self.results.append((at, str(event.get("delegation_id")), str(event.get("text", ""))))
        elif kind == "card":
            self.cards += 1


async def offer(caller: Any, session_id: str) -> tuple[Any, httpx.Response]:
    """What a browser does once its session exists: the "events" data channel, the microphone, the
    handlers, and the SDP offer POSTed to the edge. Returns the data channel and the edge's answer,
    for the caller to judge (both synthetic callers use this)."""
    pc = caller.pc
    channel = pc.createDataChannel("events")
    channel.on("message", caller._on_message)
    pc.addTrack(caller.mic)
    pc.on("track", caller._on_track)
    pc.on("connectionstatechange", caller._on_connection_state)
    await pc.setLocalDescription(await pc.createOffer())
    answer = await caller.http.post(
        f"/api/sessions/{session_id}/offer",
        json={"sdp": pc.localDescription.sdp, "type": "offer"},
        headers=caller._auth,
    )
    return channel, answer


class Caller:
    """One call against the edge at base_url, from dial to hangup."""

    def __init__(self, base_url: str, log: CallLog, questions: list[Question], ask_every_s: float) -> None:
        self.base_url = base_url
        self.log = log
        self.questions = questions
        self.ask_every_s = ask_every_s
        self.http = httpx.AsyncClient(base_url=base_url, timeout=20)
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.mic = SyntheticMic(tone=not log.delegator, seed=1000 * log.caller + log.call)
        self.token = ""
        self.channel: Any = None
        self._ended = asyncio.Event()
        self._sink: asyncio.Task[None] | None = None

    async def run(self, first_chunk_timeout_s: float = 90.0) -> CallLog:
        """Dial, talk until the planned end (asking questions if a delegator), hang up. Never raises:
        whatever went wrong is in the log's ``ended_early``."""
        log = self.log
        log.dialed_at = time.monotonic()
        try:
            await self._dial()
            await self._wait_first_chunk(first_chunk_timeout_s)
            await self._talk()
        except Exception as exc:
            if not log.ended_early:
                log.ended_early = f"{type(exc).__name__}: {exc}"[:300]
        finally:
            await self._hangup()
        return log

    async def _dial(self) -> None:
        for attempt in range(6):
            r = await self.http.post("/api/sessions")
            if r.status_code != 503:
                break
            await asyncio.sleep(float(r.headers.get("Retry-After", "2")) * (attempt + 1) / 2)
        r.raise_for_status()
        info = r.json()
        self.log.session_id, self.token = info["session_id"], info["token"]
        self.channel, r = await offer(self, self.log.session_id)
        r.raise_for_status()
        await self.pc.setRemoteDescription(RTCSessionDescription(**r.json()))

    @property
    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def _on_message(self, message: object) -> None:
        """One event from the edge. Nothing may raise from here (it would unwind into aiortc's SCTP
        loop and end the call); an event the caller cannot read is counted as an error."""
        at = time.monotonic()
        try:
            event = json.loads(message) if isinstance(message, str) else None
            if not isinstance(event, dict):
                raise ValueError("not a JSON object")
            self.log.on_event(event, at)
        except (ValueError, KeyError, TypeError) as exc:
            self.log.on_event({"type": "error", "code": "CLIENT_UNREADABLE_EVENT", "message": repr(exc)}, at)
            return
        if event.get("type") == "state" and event.get("state") == "closed" and self.log.hangup_at is None:
            self._end_early(f"edge closed the call: {event.get('detail', '')}")

    def _on_connection_state(self) -> None:
        state = self.pc.connectionState
        if state in ("failed", "closed") and self.log.hangup_at is None:
            self._end_early(f"peer connection {state}")

    def _end_early(self, why: str) -> None:
        if not self.log.ended_early:
            self.log.ended_early = why
        self._ended.set()

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            self._sink = asyncio.ensure_future(self._play(track))

    async def _play(self, track: MediaStreamTrack) -> None:
        """Take the model's voice as a browser's playout would (frames counted, not kept)."""
        with contextlib.suppress(Exception):
            while True:
                await track.recv()
                self.log.audio_frames += 1

    async def _wait_first_chunk(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self.log.first_chunk_at is None:
            if self._ended.is_set():
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"no output chunk within {timeout_s:.0f} s of dialling")
            await asyncio.sleep(0.1)

    async def _talk(self) -> None:
        log = self.log
        next_ask = time.monotonic() + 6.0 + 2.0 * log.caller
        asked = 0
        while not self._ended.is_set():
            now = time.monotonic()
            if now >= log.planned_end:
                return
            if log.delegator and self.questions and now >= next_ask:
                q = self.questions[(asked + log.caller) % len(self.questions)]
                self._ask(q, ASK_MODES[asked % len(ASK_MODES)])
                asked += 1
                next_ask = now + self.ask_every_s
            wake = min(log.planned_end, next_ask if log.delegator else log.planned_end)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ended.wait(), max(0.05, wake - time.monotonic()))

    def _ask(self, q: Question, mode: str) -> None:
        """Ask ``q`` typed, spoken or both (the gym's delegation task speaks it; typing is what the
        browser's text box does), so the report can tell which the model delegates on."""
        if self.channel is None or self.channel.readyState != "open":
            return
        if q.clip48 is None:
            mode = "typed"
        self.log.asks.append((time.monotonic(), q.text, mode))
        if mode != "typed":
            assert q.clip48 is not None
            self.mic.say(q.clip48)
        if mode != "spoken":
            self.channel.send(json.dumps({"type": "text", "text": q.text}))

    async def _hangup(self) -> None:
        """DELETE the session (as the browser's Stop does), then close the peer connection."""
        log = self.log
        log.hangup_at = time.monotonic()
        if self.log.session_id and self.token:
            try:
                r = await self.http.delete(f"/api/sessions/{log.session_id}", headers=self._auth)
                log.hangup_status = r.status_code
            except httpx.HTTPError:
                log.hangup_status = None
        with contextlib.suppress(Exception):
            await self.pc.close()
        self.mic.stop()
        if self._sink is not None:
            self._sink.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._sink
        await self.http.aclose()
