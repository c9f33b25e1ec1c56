"""One call at the edge: an aiortc peer connection, the chunk timer that turns its media into
200 ms InputChunks on the wall-clock boundaries, the gRPC stream to the interaction service, and
the playout of the model's answer.

Life of a session: ``created`` (token issued) → ``connecting`` (offer answered) → ``live`` (ICE
connected, stream open; chunks flow) → ``closed`` (either side closed, ICE failed, idle, or reaped).
Closing releases everything: tasks, the gRPC stream (CloseSession), the peer connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections import deque
from typing import Any

import av
import grpc
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCIceTransportPolicy,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from opentelemetry import metrics

from microturn.config import Settings
from microturn.edge.call_metrics import NO_METRICS, CallMetrics
from microturn.edge.call_trace import CallTrace, TurnTiming
from microturn.edge.chunker import AudioChunker
from microturn.edge.events import (
    BAD_MESSAGE,
    BadMessage,
    ClientErrors,
    error_event,
    output_events,
    parse_client_message,
    state_event,
)
from microturn.edge.ice import advertise_host_candidates, sdp_candidates
from microturn.edge.jitter import set_audio_prefetch
from microturn.edge.playout import PlayoutTrack
from microturn.edge.turn import session_ice_servers
from microturn.interaction.client import InteractionSession, SessionClosed, SessionRejected
from microturn.protocol.chunks import input_chunk
from microturn.protocol.clock import ChunkClock, now_unix_ms
from microturn.rollout.routing import Route
from microturn.telemetry import log_context
from microturn.v1 import media_pb2

log = logging.getLogger(__name__)


class NoCandidates(RuntimeError):
    """The answer has no ICE candidate: the edge has no way to receive this call's media now."""


class EdgeSession:
    def __init__(
        self,
        session_id: str,
        settings: Settings,
        channel: grpc.aio.Channel,
        client_errors: ClientErrors | None = None,
        route: Route | None = None,
        call_metrics: CallMetrics | None = None,
    ) -> None:
        self.session_id = session_id
        # the model version and Serve application of this call, for its whole life
        self.route = route or Route("", settings.interaction.app_name)
        self.settings = settings
        self.cfg = settings.edge
        # the process's error accounting (EdgeServer's); a session on its own counts nowhere
        self.client_errors = client_errors or ClientErrors(
            metrics.NoOpMeter("microturn.edge"), self.cfg.client_error_log_interval_s
        )
        self.limits = settings.limits
        self.metrics = call_metrics or NO_METRICS  # the process's (EdgeServer's)
        # the last minute of micro-turns: where each one's time went (``microturn trace``)
        self.waterfall: deque[TurnTiming] = deque(maxlen=300)
        self._last_output: float | None = None
        # Both sides of this call use the same servers (TURN credentials are per session).
        self.ice_servers = session_ice_servers(self.cfg, session_id)
        self.channel = channel
        self.clock = ChunkClock(self.limits.chunk_ms)
        self.state = "created"
        self.created_at = time.monotonic()
        self.last_media = time.monotonic()
        self.pc: RTCPeerConnection | None = None
        self.playout = PlayoutTrack(self.limits.sample_rate_hz, max_ms=self.cfg.playout_max_ms)
        self.chunker = AudioChunker(self.limits.sample_rate_hz * self.limits.chunk_ms // 1000)
        self.resampler = av.AudioResampler(format="s16", layout="mono", rate=self.limits.sample_rate_hz)
        self.frames: deque[media_pb2.VideoFrame] = deque(maxlen=self.limits.max_video_frames_per_chunk)
        self.typed: list[str] = []
        self.channel_out = None  # the "events" data channel
        self.grpc: InteractionSession | None = None
        self.trace: CallTrace | None = None  # the call's spans (from when its stream opens)
        self.t0_ms: int | None = None
        self.chunks_sent = 0
        self.video_frames_seen = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = asyncio.Event()
        self._recoveries_reported = 0

    # -- signalling ----------------------------------------------------------------------------
    async def accept_offer(self, offer: RTCSessionDescription) -> RTCSessionDescription:
        servers = [
            RTCIceServer(urls=s.urls, username=s.username, credential=s.credential) for s in self.ice_servers
        ]
        policy = RTCIceTransportPolicy(self.cfg.ice_transport_policy)
        pc = RTCPeerConnection(RTCConfiguration(iceServers=servers, iceTransportPolicy=policy))
        self.pc = pc
        pc.on("track", self._on_track)
        pc.on("datachannel", self._on_datachannel)
        pc.on("connectionstatechange", self._on_connection_state)
        await pc.setRemoteDescription(offer)
        set_audio_prefetch(pc, self.cfg.audio_jitter_prefetch_frames)  # (before any media flows)
        pc.addTrack(self.playout)
        await pc.setLocalDescription(await pc.createAnswer())
        answer = pc.localDescription
        if not sdp_candidates(answer.sdp):
            raise NoCandidates(
                "the edge gathered no ICE candidate for this call (no free port in edge.ice_port_min.."
                "ice_port_max, no usable host address, or the TURN server did not answer); see the edge's log"
            )
        self.state = "connecting"
        if self.cfg.ice_advertised_address:
            sdp = advertise_host_candidates(answer.sdp, self.cfg.ice_advertised_address)
            answer = RTCSessionDescription(sdp=sdp, type=answer.type)
        return answer

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            self._spawn(self._read_audio(track), "audio-in")
        elif track.kind == "video":
            self._spawn(self._read_video(track), "video-in")

    def _on_datachannel(self, channel) -> None:
        self.channel_out = channel
        channel.on("message", self._on_message)
        self.send_event(state_event(self.state))

    async def _on_connection_state(self) -> None:
        assert self.pc is not None
        state = self.pc.connectionState
        log.info("peer connection %s", state, extra={"fields": {"session.id": self.session_id}})
        if state == "connected" and self.t0_ms is None:
            self.t0_ms = self.clock.floor(now_unix_ms())
            self._spawn(self._run(), "session")
        elif state in ("failed", "closed"):
            await self.close(f"peer connection {state}")

    # -- media in ------------------------------------------------------------------------------
    async def _read_audio(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                self.last_media = time.monotonic()
                if self.t0_ms is None:
                    continue  # not connected yet: the session's clock starts at "connected"
                for f in self.resampler.resample(frame):
                    self.chunker.push(f.to_ndarray().reshape(-1).astype(np.int16, copy=False))

    async def _read_video(self, track: MediaStreamTrack) -> None:
        w, h = self.limits.video_width, self.limits.video_height
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                self.last_media = time.monotonic()
                self.video_frames_seen += 1
                if self.t0_ms is None or self.video_frames_seen % self.cfg.video_every_n:
                    continue
                rgb = frame.reformat(width=w, height=h, format="rgb24").to_ndarray()
                self.frames.append(
                    media_pb2.VideoFrame(
                        capture_unix_ms=now_unix_ms(), width=w, height=h, format=media_pb2.PIXEL_FORMAT_RGB24,
                        data=rgb.tobytes(),
                    )
                )  # fmt: skip

    def _on_message(self, raw: object) -> None:
        """One browser message. Nothing may escape from here: an exception unwinds into aiortc's
        SCTP receive loop, which then closes the peer connection and so ends the call."""
        try:
            text = parse_client_message(
                raw,
                self.cfg.max_datachannel_bytes,
                self.limits.max_text_bytes_per_chunk,
                self.cfg.max_json_depth,
            )
            # the replica refuses a whole chunk (its audio too) whose typed text is over the budget
            budget = self.limits.max_text_bytes_per_chunk
            if sum(len(t.encode()) for t in self.typed) + len(text.encode()) > budget:
                raise BadMessage(
                    f"typed text over {budget} bytes per chunk ({self.limits.chunk_ms} ms): send it again later"
                )
        except BadMessage as exc:
            reason = str(exc)
        except Exception as exc:  # not ours, still the message's fault: the call goes on
            log.debug("unreadable data-channel message", exc_info=True)
            reason = f"the message could not be read ({type(exc).__name__})"
        else:
            self.typed.append(text)
            return
        with contextlib.suppress(Exception):
            self.send_event({"type": "error", "code": BAD_MESSAGE, "message": reason})

    # -- the session ---------------------------------------------------------------------------
    async def _run(self) -> None:
        with log_context(session_id=self.session_id):
            try:
                if not await self._open_stream():
                    return
                self.state = "live"
                self.send_event(state_event("live"))
                self._spawn(self._read_outputs(), "outputs")
                await self._cut_chunks()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("session failed")
                self.send_event({"type": "error", "code": "INTERNAL", "message": str(exc)})
                await self.close("internal error")

    async def _open_stream(self) -> bool:
        assert self.t0_ms is not None
        self.trace = CallTrace(self.session_id, self.route.version)
        self.grpc = InteractionSession(
            self.channel,
            self.route.app,
            self.session_id,
            model_version=self.route.version,
            seed=secrets.randbits(31),
            t0_ms=self.t0_ms,
            chunk_ms=self.limits.chunk_ms,
            hop="edge",
            trace_context=self.trace.carrier(),
        )
        deadline = time.monotonic() + self.cfg.open_retry_s
        backoff = 0.5
        while True:
            try:
                await self.grpc.open()
                return True
            except SessionRejected as exc:
                # The replica's own retry_after paces a busy retry, so a call gets in as soon as a
                # replica (a new one, after a scale-up) has a slot; otherwise back off.
                wait = exc.error.retry_after_ms / 1000 if exc.error.retry_after_ms else backoff
                if not exc.error.retryable or time.monotonic() + wait > deadline:
                    self.send_event(error_event(exc.error))
                    await self.close(str(exc))
                    return False
                self.send_event(state_event("waiting", f"the model is busy; retrying in {wait:.1f} s"))
            except grpc.aio.AioRpcError as exc:
                wait = backoff
                if time.monotonic() + wait > deadline:
                    self.send_event({"type": "error", "code": "UNAVAILABLE", "message": exc.details() or ""})
                    await self.close("interaction service unavailable")
                    return False
                self.send_event(state_event("waiting", "the interaction service is not reachable; retrying"))
            await asyncio.sleep(wait)
            backoff = min(backoff * 2, 4.0)

    async def _cut_chunks(self) -> None:
        """At each boundary (plus cut_delay_ms), send the chunk that just ended."""
        assert self.grpc is not None and self.t0_ms is not None
        # If opening the stream took longer than a chunk, the first chunks go out at once (late,
        # which the replica absorbs) rather than shifting the session's clock.
        k = 0
        while True:
            due = self.clock.end(self.t0_ms, k) + self.cfg.cut_delay_ms
            await asyncio.sleep(max(0.0, (due - now_unix_ms()) / 1000))
            pcm = self.chunker.cut(first=k == 0)
            chunk = input_chunk(self.session_id, k, self.t0_ms, pcm.astype("<i2").tobytes(), clock=self.clock,
                                frames=list(self.frames), typed=self.typed)  # fmt: skip
            self.frames.clear()
            self.typed = []
            if self.trace is not None:
                self.trace.chunk_sent(chunk.header)
            await self.grpc.send(chunk)
            self.chunks_sent += 1
            k += 1

    async def _read_outputs(self) -> None:
        assert self.grpc is not None
        while True:
            try:
                msg = await self.grpc.receive()
            except SessionClosed:
                return
            if self.grpc.recoveries > self._recoveries_reported:
                for _ in range(self.grpc.recoveries - self._recoveries_reported):
                    self.metrics.recovered()
                self._recoveries_reported = self.grpc.recoveries
                self.send_event(state_event("live", f"recovered on replica {self.grpc.accepted.replica_id}"))
            kind = msg.WhichOneof("kind")
            if kind == "chunk":
                self._measure(msg.chunk)
                self.playout.push(msg.chunk.audio.pcm_s16le)
                for event in output_events(msg.chunk):
                    self.send_event(event)
            elif kind == "error":
                self.send_event(error_event(msg.error))

    def _measure(self, out: media_pb2.OutputChunk) -> None:
        """One micro-turn back: its span ends, its hops and the gap since the last output are
        recorded, and its timing joins the call's waterfall."""
        now = time.monotonic()
        if self._last_output is not None:
            self.metrics.gap((now - self._last_output) * 1000)
        self._last_output = now
        if self.trace is None:
            return
        spans = self.trace.output(out)
        if spans:
            self.metrics.turn(spans, out.model_version)
            self.waterfall.append(TurnTiming.of(out, spans, self.playout.buffered_ms))

    def move_to(self, route: Route, channel: grpc.aio.Channel, why: str) -> None:
        """Carry on on another model version (``route``): a rollout retired this call's version and
        the two are replay-compatible. The output goes on; the browser is told which version now."""
        log.info("session %s moves from model version %s to %s: %s",
                 self.session_id, self.route.version, route.version, why)  # fmt: skip
        self.route, self.channel = route, channel
        if self.grpc is not None:  # (not open yet: it opens on the new version)
            self.grpc.move_to(channel, route.app, route.version)
        self.send_event(state_event(self.state, f"moving to model version {route.version}"))

    # -- out -----------------------------------------------------------------------------------
    def send_event(self, event: dict[str, Any]) -> None:
        if event.get("type") == "error":
            code, message = str(event.get("code")), str(event.get("message", ""))
            self.client_errors.report(code, message, self.session_id)
            if self.trace is not None:
                self.trace.error(code, message)
        ch = self.channel_out
        if ch is not None and ch.readyState == "open":
            ch.send(json.dumps(event))

    def _spawn(self, coro, name: str) -> None:
        task = asyncio.create_task(coro, name=f"{name}-{self.session_id}")
        task.add_done_callback(self._task_done)
        self._tasks.append(task)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        """A task of the call failed (a bug): say so and end the call, rather than leave it mute."""
        if task.cancelled() or task.exception() is None or self.closed:
            return
        log.error("session task %s failed", task.get_name(), exc_info=task.exception())
        self.send_event({"type": "error", "code": "INTERNAL", "message": f"{task.get_name()} failed"})
        self._tasks.append(asyncio.create_task(self.close("internal error"), name=f"close-{self.session_id}"))

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def close(self, reason: str = "") -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self.state = "closed"
        log.info("closing session: %s", reason, extra={"fields": {"session.id": self.session_id}})
        self.send_event(state_event("closed", reason))
        current = asyncio.current_task()
        # Stop cutting chunks, say CloseSession, let the output reader see the stream end, then
        # cancel whatever is left.
        for task in self._tasks:
            if task is not current and task.get_name().startswith("session-"):
                task.cancel()
        if self.grpc is not None:
            with contextlib.suppress(Exception):
                await self.grpc.close_writing(reason)
            readers = [t for t in self._tasks if t.get_name().startswith("outputs-")]
            if readers:
                await asyncio.wait(readers, timeout=2.0)
        for task in self._tasks:
            if task is not current:
                task.cancel()
        for task in self._tasks:
            if task is not current:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self.grpc is not None:
            self.grpc.cancel()
        if self.trace is not None:
            self.trace.end(reason)
        self.playout.stop()
        if self.pc is not None:
            with contextlib.suppress(Exception):
                await self.pc.close()
