"""One scenario-driven aiortc caller: dials the edge as the browser does, speaks (or types) the
scenario's turns at their scheduled times, and measures what the caller hears.

The microphone (loadtest.caller's SyntheticMic, faint noise between turns) plays each prompt at
real-time pace; the wall time its last speech sample leaves is the user's end of speech. Every
received model audio frame is fed, with its arrival time, to the OnsetDetector; the first onset after
a turn's end of speech (or a typed turn's send) within ``answer_timeout_s`` is the answer, and the
difference the turn latency. A barge-in turn starts ``barge_in_ms`` into the previous answer; the
model's next speech offset after it is the yield. A caller never raises: whatever failed is in the
record's ``failure``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from loadtest.caller import FRAME_SAMPLES, MIC_RATE, SyntheticMic, offer
from loadtest.prompts import Prompt, turn_key
from loadtest.records import SessionRecord, StatsSample, TurnRecord
from loadtest.scenario import Scenario, Turn, play_until, turn_start
from loadtest.turns import ReceivedSpeech, settle_turns

GAP_MS = 100.0  # received-audio gaps longer than this are recorded
ANSWER_POLL_S = 0.02


@dataclass
class Utterance:
    """A prompt queued on the mic; the wall times are filled in as its frames leave."""

    prompt: Prompt
    started_at: float | None = None
    ended_at: float | None = None  # wall time of the last speech sample (the user's end of speech)
    done: asyncio.Event | None = None


class ScenarioMic(SyntheticMic):
    """SyntheticMic without the tone, that timestamps each utterance's first and last speech sample
    at the moment its 20 ms frame is handed to the encoder."""

    def __init__(self, seed: int) -> None:
        super().__init__(tone=False, seed=seed)
        self._queue: list[tuple[Utterance, np.ndarray]] = []
        self._pos = 0

    def speak(self, prompt: Prompt) -> Utterance:
        u = Utterance(prompt, done=asyncio.Event())
        pad = (-len(prompt.pcm)) % FRAME_SAMPLES
        self._queue.append((u, np.concatenate([prompt.pcm, np.zeros(pad, np.int16)]).astype(np.int16)))
        return u

    def _samples(self) -> np.ndarray:
        if not self._queue:
            return super()._samples()
        now = time.time()
        u, pcm = self._queue[0]
        start = self._pos
        if start == 0:
            u.started_at = now
        frame = pcm[start : start + FRAME_SAMPLES]
        end = u.prompt.speech_end
        if start < end <= start + FRAME_SAMPLES:
            u.ended_at = now + (end - start) / MIC_RATE
        self._pos += FRAME_SAMPLES
        if self._pos >= len(pcm):
            self._queue.pop(0)
            self._pos = 0
            if u.ended_at is None:  # speech_end at the very start of a frame boundary
                u.ended_at = now + (end - start) / MIC_RATE
            if u.done is not None:
                u.done.set()
        return frame


def to_mono(frame: Any) -> np.ndarray:
    """A decoded av.AudioFrame (aiortc's Opus decoder: packed s16 stereo) as int16 mono."""
    arr = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if channels == 1:
        return arr.reshape(-1).astype(np.int16)
    if frame.format.is_planar:
        return arr.mean(axis=0).astype(np.int16)
    return arr.reshape(-1, channels).mean(axis=1).astype(np.int16)


def warm_up() -> None:
    """Load Silero VAD now (seconds, blocking) rather than in the first call's event loop."""
    ReceivedSpeech(MIC_RATE).feed(np.zeros(MIC_RATE, np.int16), time.time())


class AiortcCaller:
    """One call from dial to hangup, driven by a scenario; ``run`` returns its SessionRecord."""

    def __init__(
        self,
        url: str,
        scenario: Scenario,
        prompts: dict[str, Prompt],
        caller: str,
        *,
        shard: int = 0,
        stop: asyncio.Event | None = None,
        max_passes: int | None = None,
        setup_timeout_s: float = 30.0,
        stats_every_s: float = 5.0,
        on_turn: Callable[[TurnRecord], None] | None = None,
        seed: int = 0,
    ) -> None:
        self.url = url.rstrip("/")
        self.scenario = scenario
        self.prompts = prompts
        self.stop = stop or asyncio.Event()
        self.max_passes = max_passes
        self.setup_timeout_s = setup_timeout_s
        self.stats_every_s = stats_every_s
        self.on_turn = on_turn
        self.rec = SessionRecord(caller=caller, mode="aiortc", scenario=scenario.name, shard=shard)
        self.mic = ScenarioMic(seed=seed)
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.http = httpx.AsyncClient(base_url=self.url, timeout=20)
        self.token = ""
        self.channel: Any = None
        self.onsets: ReceivedSpeech | None = None
        self.errors: Counter[str] = Counter()
        self._connected = asyncio.Event()
        self._ended = asyncio.Event()  # the edge or the connection ended the call
        self._tasks: list[asyncio.Task[None]] = []
        self._last_frame_at: float | None = None
        self._samples_in = 0  # decoded model audio samples received (what a playout would play)
        self._hanging_up = False

    async def run(self) -> SessionRecord:
        """Dial, play the scenario until session_s (or ``stop``), hang up. Never raises."""
        rec = self.rec
        rec.dialed_at = time.time()
        try:
            self.onsets = ReceivedSpeech(MIC_RATE)
            await self._dial()
            await self._wait_connected()
            self._tasks.append(asyncio.ensure_future(self._sample_stats()))
            left = rec.dialed_at + self.scenario.session_s - time.time()
            await play_until(self._script(), self._ended, self.stop, left)
        except Exception as exc:
            if not rec.failure:
                stage = "setup" if rec.connected_at is None else "call"
                rec.failure = f"{stage}: {type(exc).__name__}: {exc}"[:300]
        finally:
            await self._hangup()
            self._finish()
        return rec

    # --- dialling -------------------------------------------------------------------------
    async def _dial(self) -> None:
        r = await self.http.post("/api/sessions")
        if not r.is_success:
            self.rec.failure = f"setup: POST /api/sessions answered HTTP {r.status_code}: {r.text[:120]}"
            raise RuntimeError(self.rec.failure)
        info = r.json()
        self.rec.session_id, self.token = str(info["session_id"]), str(info["token"])
        self.channel, r = await offer(self, self.rec.session_id)
        if not r.is_success:
            self.rec.failure = f"setup: offer answered HTTP {r.status_code}: {r.text[:120]}"
            raise RuntimeError(self.rec.failure)
        await self.pc.setRemoteDescription(RTCSessionDescription(**r.json()))

    async def _wait_connected(self) -> None:
        try:
            await asyncio.wait_for(self._connected.wait(), self.setup_timeout_s)
        except TimeoutError:
            self.rec.failure = f"setup: not connected within {self.setup_timeout_s:.0f} s"
            raise RuntimeError(self.rec.failure) from None
        if self.rec.connected_at is None:  # the connection failed before it ever connected
            raise RuntimeError(self.rec.failure or "setup: the peer connection failed")

    @property
    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def _on_connection_state(self) -> None:
        state = self.pc.connectionState
        if state == "connected" and self.rec.connected_at is None:
            self.rec.connected_at = time.time()
            self.rec.setup_ms = (self.rec.connected_at - self.rec.dialed_at) * 1000
            self._connected.set()
        elif state in ("failed", "closed") and not self._hanging_up:
            self._drop(f"{'dropped' if self.rec.connected_at else 'setup'}: peer connection {state}")

    def _drop(self, why: str) -> None:
        if not self.rec.failure:
            self.rec.failure = why
        self._ended.set()
        self._connected.set()  # wake a waiting setup; connected_at stays None

    def _on_message(self, message: object) -> None:
        """One data-channel event; nothing may raise into aiortc's SCTP loop from here."""
        try:
            event = json.loads(message) if isinstance(message, str) else None
        except ValueError:
            event = None
        if not isinstance(event, dict):
            self.errors["CLIENT_UNREADABLE_EVENT"] += 1
            return
        kind = event.get("type")
        if kind == "chunk" and not self.rec.model_version:
            self.rec.model_version = str(event.get("model_version", ""))
        elif kind == "error":
            self.errors[str(event.get("code", "?"))] += 1
        elif kind == "state" and event.get("state") == "closed" and not self._hanging_up:
            self._drop(f"dropped: edge closed the call: {str(event.get('detail', ''))[:120]}")

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            self._tasks.append(asyncio.ensure_future(self._receive(track)))

    async def _receive(self, track: MediaStreamTrack) -> None:
        """Every model audio frame, timestamped on arrival, into the onset detector."""
        rec = self.rec
        with contextlib.suppress(Exception):
            while True:
                frame = await track.recv()
                at = time.time()
                if rec.first_audio_at is None:
                    rec.first_audio_at = at
                    rec.first_audio_ms = (at - rec.dialed_at) * 1000
                if self._last_frame_at is not None and (at - self._last_frame_at) * 1000 > GAP_MS:
                    rec.audio_gaps_ms.append(round((at - self._last_frame_at) * 1000, 1))
                self._last_frame_at = at
                assert self.onsets is not None
                mono = to_mono(frame)
                self._samples_in += len(mono)
                self.onsets.feed(mono, at)

    # --- the scenario -----------------------------------------------------------------------
    async def _script(self) -> None:
        """Turns in order, passes repeated (at most ``max_passes``), until the outer wait in
        ``run`` hangs up at ``session_s`` after dialling; starts once the first model audio came."""
        sc, rec = self.scenario, self.rec
        end_at = rec.dialed_at + sc.session_s
        await self._until(lambda: rec.first_audio_at is not None, time.time() + sc.answer_timeout_s)
        index = passes = 0
        while self.max_passes is None or passes < self.max_passes:
            pass_start = time.time()
            prev_onset: float | None = None
            prev_done = pass_start
            for turn in sc.turns:
                start = turn_start(turn, sc, pass_start, prev_onset, prev_done)
                if start >= end_at:
                    await asyncio.sleep(max(0.0, end_at - time.time()))
                    return
                t = await self._turn(index, turn, start, end_at)
                index += 1
                prev_onset, prev_done = t.answer_onset_at, time.time()
            passes += 1

    async def _until(self, done: Callable[[], bool], deadline: float) -> bool:
        """Wait for ``done()`` until ``deadline`` (wall time), woken by each new onset."""
        assert self.onsets is not None
        while not done():
            left = deadline - time.time()
            if left <= 0:
                return False
            self.onsets.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.onsets.changed.wait(), min(ANSWER_POLL_S, left))
        return True

    async def _turn(self, index: int, turn: Turn, start: float, end_at: float) -> TurnRecord:
        """Say or type one turn at ``start``, then wait for the model's answer (live, so the next
        turn can be timed from it; ``_finish`` settles every answer again from all onsets)."""
        assert self.onsets is not None
        await asyncio.sleep(max(0.0, start - time.time()))
        if turn.text is not None:
            if self.channel is None or self.channel.readyState != "open":
                raise RuntimeError("the events data channel is not open: a typed turn could not be sent")
            self.channel.send(json.dumps({"type": "text", "text": turn.text}))
            t = TurnRecord(index=index, kind="text", said_at=time.time(), speech_end_at=None)
        else:
            u = self.mic.speak(self.prompts[turn_key(turn)])
            assert u.done is not None
            await u.done.wait()
            assert u.started_at is not None and u.ended_at is not None
            t = TurnRecord(index=index, kind=turn.kind, said_at=u.started_at, speech_end_at=u.ended_at)
            if turn.kind == "barge_in":
                t.barge_in_at = u.started_at
        self.rec.turns.append(t)
        ref = t.speech_end_at if t.speech_end_at is not None else t.said_at
        limit = ref + self.scenario.answer_timeout_s

        def answered() -> bool:
            assert self.onsets is not None
            t.answer_onset_at = self.onsets.first_after(ref, before=limit)
            return t.answer_onset_at is not None

        if await self._until(answered, min(limit, end_at)):
            assert t.answer_onset_at is not None
            t.turn_latency_ms = (t.answer_onset_at - ref) * 1000
            if self.on_turn is not None:
                self.on_turn(t)
        return t

    # --- stats and the end ----------------------------------------------------------------------
    async def _sample_stats(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                await asyncio.sleep(self.stats_every_s)
                with contextlib.suppress(Exception):
                    self.rec.stats.append(
                        stats_sample(await self.pc.getStats(), time.time(), self._samples_in)
                    )

    async def _hangup(self) -> None:
        """DELETE the session (the browser's Stop), close the peer connection, stop the tasks."""
        self._hanging_up = True
        if self.rec.connected_at is not None:
            with contextlib.suppress(Exception):
                self.rec.stats.append(stats_sample(await self.pc.getStats(), time.time(), self._samples_in))
        if self.rec.session_id and self.token:
            with contextlib.suppress(httpx.HTTPError):
                await self.http.delete(f"/api/sessions/{self.rec.session_id}", headers=self._auth)
        with contextlib.suppress(Exception):
            await self.pc.close()
        self.mic.stop()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        with contextlib.suppress(Exception):
            await self.http.aclose()

    def _finish(self) -> None:
        """Settle every turn from all onsets found (the live wait may have missed a late
        detection): the answer, the latency, the barge-in yield; a turn whose answer window the
        hangup cut short, with no answer in it, is dropped rather than counted unanswered."""
        rec = self.rec
        rec.ended_at = time.time()
        rec.errors = dict(self.errors)
        if self.onsets is None:
            return
        rec.turns = settle_turns(rec.turns, self.onsets, self.scenario.answer_timeout_s, rec.ended_at)


def stats_sample(report: Any, at: float, samples_received: int = 0) -> StatsSample:
    """aiortc's getStats() report as a StatsSample: the inbound audio's counters and jitter (RTP
    units at 48 kHz -> ms), the RTT from the remote-inbound report when there is one, and the
    samples decoded so far (aiortc conceals nothing, so concealed_samples stays 0)."""
    s = StatsSample(at=at, total_samples_received=samples_received)
    for stat in report.values():
        kind = getattr(stat, "type", "")
        if kind == "inbound-rtp" and getattr(stat, "kind", "audio") == "audio":
            s.packets_received += int(getattr(stat, "packetsReceived", 0) or 0)
            s.packets_lost += max(0, int(getattr(stat, "packetsLost", 0) or 0))
            jitter = getattr(stat, "jitter", None)
            if jitter is not None:
                s.jitter_ms = float(jitter) / (MIC_RATE / 1000)
        elif kind == "remote-inbound-rtp":
            rtt = getattr(stat, "roundTripTime", None)
            if rtt is not None:
                s.rtt_ms = float(rtt) * 1000
    return s


async def run_call(
    url: str, scenario: Scenario, prompts: dict[str, Prompt], caller: str, **kwargs: Any
) -> SessionRecord:
    """One call (see AiortcCaller); never raises."""
    return await AiortcCaller(url, scenario, prompts, caller, **kwargs).run()


async def run_slot(
    url: str,
    scenario: Scenario,
    prompts: dict[str, Prompt],
    name: str,
    stop: asyncio.Event,
    on_record: Callable[[SessionRecord], None],
    *,
    once: bool = False,
    shard: int = 0,
    on_turn: Callable[[TurnRecord], None] | None = None,
    on_dial: Callable[[], None] | None = None,
    redial_pause_s: float = 1.0,
) -> None:
    """A caller slot of a load profile: waits a random 0..join s, then calls, hangs up and dials
    again until ``stop`` (one call of one scenario pass if ``once``)."""
    rng = random.Random(name)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), rng.uniform(0, scenario.join))
    call = 0
    while not stop.is_set():
        if on_dial is not None:
            on_dial()
        rec = await run_call(
            url, scenario, prompts, f"{name}-{call}", shard=shard, stop=stop,
            max_passes=1 if once else None, on_turn=on_turn, seed=rng.randrange(1 << 30),
        )  # fmt: skip
        on_record(rec)
        call += 1
        if once:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), redial_pause_s)
