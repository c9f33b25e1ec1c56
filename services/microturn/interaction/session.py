"""One session as a replica holds it: the next expected chunk, chunks waiting for their tick,
background updates waiting to enter text-in, the transcript for delegation context, and the
stream (if any) its outputs go to.

Input chunks are checked here against the service's limits before they reach the engine, so a bad
chunk is answered with a typed error and never touches the session's slot; the model hears silence for
that micro-turn instead (``silence``), so the session's timeline and its output go on.

Queue policy (``accept``): a chunk whose media already ended (resent after a recovery) is always taken
for catch-up, up to ``max_backlog`` queued chunks, past which the oldest are dropped with a DROPPED error
each; a chunk more than ``max_pending`` micro-turns ahead of real time is refused (retry later).
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from opentelemetry.trace import SpanContext

from microturn.config import LimitsSettings
from microturn.engine import ChunkInput, ResumePoint
from microturn.interaction.errors import Code, StreamError
from microturn.telemetry.turns import TurnClock
from microturn.v1 import delegation_pb2, interaction_pb2, media_pb2

BYTES_PER_SAMPLE = 2


class Arrival(NamedTuple):
    """How a live chunk arrived: when, and under which of the sender's spans (None: untraced)."""

    received_us: int
    trace: SpanContext | None = None


@dataclass
class PendingUpdate:
    """A background update waiting for the next tick's text-in; acked once it has entered."""

    delegation_id: str
    seq: int
    text: str
    ack: object = None  # an awaitable factory from the bus, or None


@dataclass
class Session:
    session_id: str
    seed: int
    t0_ms: int  # media start of chunk 0
    next_index: int
    live_from: int
    limits: LimitsSettings
    max_pending: int
    max_backlog: int
    context_utterances: int
    text_queue_limit: int
    pending: deque[ChunkInput] = field(default_factory=deque)
    updates: deque[PendingUpdate] = field(default_factory=deque)
    outbox: asyncio.Queue[interaction_pb2.ServerMessage | None] | None = None
    transcript: deque[delegation_pb2.Utterance] = field(default_factory=deque)
    cards: deque[media_pb2.UiCard] = field(default_factory=deque)
    detached_at: float | None = None
    closed: bool = False
    # chunk index -> how live chunks arrived: receive time (stamped on their output for latency
    # accounting) and the sender's span for that micro-turn (the replica's spans join its trace)
    received: dict[int, Arrival] = field(default_factory=dict)
    # a session being rebuilt from a replay: the (chunk, resume point) items still to force, the last one
    rebuild: deque[tuple[ChunkInput, ResumePoint]] = field(default_factory=deque)
    rebuild_last: ResumePoint | None = None
    rebuild_started: float = 0.0
    turns: TurnClock = field(default_factory=TurnClock)  # the caller's end of turn, for turn latency

    @property
    def rebuilding(self) -> bool:
        return self.rebuild_last is not None

    # -- input ---------------------------------------------------------------------------------
    def check_index(self, chunk: media_pb2.InputChunk) -> None:
        """Raise for a chunk that is not this session's or is a duplicate (both are dropped)."""
        h = chunk.header
        k = h.chunk_index
        if h.session_id != self.session_id:
            raise StreamError(
                Code.ERROR_CODE_PROTOCOL,
                f"chunk for session {h.session_id!r} on the stream of {self.session_id!r}",
                k,
            )
        if k < self.next_index:
            raise StreamError(
                Code.ERROR_CODE_OUT_OF_ORDER,
                f"chunk {k} is a duplicate: expected chunk {self.next_index}; dropped",
                k,
            )

    def silence(self, chunk_index: int) -> ChunkInput:
        """What the model hears in a micro-turn whose chunk failed validation."""
        n = self.limits.sample_rate_hz * self.limits.chunk_ms // 1000
        return ChunkInput(
            self.session_id, chunk_index, np.zeros(n, np.int16), sample_rate=self.limits.sample_rate_hz
        )

    def to_engine_chunk(self, chunk: media_pb2.InputChunk) -> ChunkInput:
        """Check one InputChunk (of this session, not a duplicate) against the limits; convert it."""
        h = chunk.header
        k = h.chunk_index
        lim = self.limits
        if h.duration_ms != lim.chunk_ms:
            raise StreamError(
                Code.ERROR_CODE_INVALID_CHUNK,
                f"header.duration_ms is {h.duration_ms}, chunks are {lim.chunk_ms} ms",
                k,
            )
        expected_start = self.t0_ms + k * lim.chunk_ms
        if h.media_start_unix_ms != expected_start:
            raise StreamError(
                Code.ERROR_CODE_INVALID_CHUNK,
                f"header.media_start_unix_ms is {h.media_start_unix_ms}, chunk {k} starts at {expected_start}",
                k,
            )
        a = chunk.audio
        if a.sample_rate_hz != lim.sample_rate_hz or a.channels != 1:
            raise StreamError(
                Code.ERROR_CODE_INVALID_CHUNK,
                f"audio must be {lim.sample_rate_hz} Hz mono, got {a.sample_rate_hz} Hz x {a.channels} channels",
                k,
            )
        want = lim.sample_rate_hz * lim.chunk_ms // 1000 * BYTES_PER_SAMPLE
        if len(a.pcm_s16le) != want:
            raise StreamError(
                Code.ERROR_CODE_INVALID_CHUNK,
                f"audio.pcm_s16le is {len(a.pcm_s16le)} bytes, a {lim.chunk_ms} ms chunk is {want} bytes",
                k,
            )
        if len(chunk.video) > lim.max_video_frames_per_chunk:
            raise StreamError(
                Code.ERROR_CODE_INVALID_CHUNK,
                f"{len(chunk.video)} video frames, at most {lim.max_video_frames_per_chunk} per chunk",
                k,
            )
        frames = []
        for f in chunk.video:
            size = lim.video_width * lim.video_height * 3
            if (f.width, f.height) != (lim.video_width, lim.video_height) or len(f.data) != size:
                raise StreamError(
                    Code.ERROR_CODE_INVALID_CHUNK,
                    f"video frames must be {lim.video_width}x{lim.video_height} RGB24 ({size} bytes), "
                    f"got {f.width}x{f.height} with {len(f.data)} bytes",
                    k,
                )
            frames.append(np.frombuffer(f.data, dtype=np.uint8).reshape(f.height, f.width, 3))
        typed = [t.text for t in chunk.text if t.source != media_pb2.TEXT_SOURCE_BACKGROUND]
        background = [t.text for t in chunk.text if t.source == media_pb2.TEXT_SOURCE_BACKGROUND]
        n_text = sum(len(t.encode()) for t in typed)
        if n_text > lim.max_text_bytes_per_chunk:
            raise StreamError(
                Code.ERROR_CODE_INVALID_CHUNK,
                f"{n_text} bytes of typed text, at most {lim.max_text_bytes_per_chunk} per chunk",
                k,
            )
        return ChunkInput(
            session_id=self.session_id,
            chunk_index=k,
            pcm=np.frombuffer(a.pcm_s16le, dtype=np.int16).copy(),
            video=np.stack(frames) if frames else None,
            text=typed,
            background=background,
            sample_rate=a.sample_rate_hz,
        )

    def check_not_ahead(self, chunk_index: int, now_ms: int) -> None:
        """Refuse a chunk whose media starts more than ``max_pending`` micro-turns from now."""
        ms = self.limits.chunk_ms
        ahead = (self.t0_ms + chunk_index * ms - now_ms) // ms
        if ahead > self.max_pending:
            raise StreamError(
                Code.ERROR_CODE_INVALID_CHUNK,
                f"chunk {chunk_index} starts {ahead} chunks ahead of real time (at most {self.max_pending}): "
                "send chunks in real time",
                chunk_index,
                retry_after_ms=ms,
            )

    def accept(
        self, chunk: ChunkInput, received_us: int, trace: SpanContext | None = None
    ) -> list[StreamError]:
        """Queue a checked live chunk (any index after the last one: a gap skips micro-turns); returns
        a DROPPED error for each queued chunk the backlog limit pushed out."""
        k = chunk.chunk_index
        self.pending.append(chunk)
        self.received[k] = Arrival(received_us, trace)
        self.next_index = k + 1
        for t in chunk.text:
            self.note(delegation_pb2.SPEAKER_USER, t, k, typed=True)
        dropped = []
        while len(self.pending) > self.max_backlog:
            old = self.pending.popleft()
            self.received.pop(old.chunk_index, None)
            dropped.append(
                StreamError(
                    Code.ERROR_CODE_DROPPED,
                    f"chunk {old.chunk_index} dropped: more than {self.max_backlog} chunks queued for catch-up",
                    old.chunk_index,
                )
            )
        return dropped

    def take_updates(self, room: int) -> list[PendingUpdate]:
        """The queued background updates that fit in ``room`` text-in tokens, in order; the rest wait
        for a later tick (an update larger than the whole queue limit is cut to fit an empty queue)."""
        out = []
        while self.updates:
            need = len(self.updates[0].text.encode()) + 2  # + the <bg> markers
            if need > room:
                if out or room < self.text_queue_limit:
                    break
                u = self.updates[0]
                u.text = u.text.encode()[: max(room - 2, 0)].decode("utf-8", "ignore")
                need = len(u.text.encode()) + 2
            out.append(self.updates.popleft())
            room -= need
        return out

    # -- transcript ----------------------------------------------------------------------------
    def note(self, speaker: int, text: str, chunk_index: int, typed: bool = False) -> None:
        """Add text to the transcript, extending the last utterance when the same speaker goes on."""
        if not text:
            return
        start = self.t0_ms + chunk_index * self.limits.chunk_ms
        end = start + self.limits.chunk_ms
        last = self.transcript[-1] if self.transcript else None
        if last is not None and last.speaker == speaker and last.typed == typed and last.end_unix_ms >= start:
            last.text += text
            last.end_unix_ms = end
            return
        self.transcript.append(
            delegation_pb2.Utterance(
                speaker=speaker, text=text, start_unix_ms=start, end_unix_ms=end, typed=typed
            )
        )
        while len(self.transcript) > self.context_utterances:
            self.transcript.popleft()

    # -- output --------------------------------------------------------------------------------
    def send(self, msg: interaction_pb2.ServerMessage) -> None:
        if self.outbox is not None:
            self.outbox.put_nowait(msg)
