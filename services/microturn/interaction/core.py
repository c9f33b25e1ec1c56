"""The replica: sessions held in the streaming engine, one tick per micro-turn for all of them.

``InteractionCore`` is everything a replica does, independent of Ray Serve (the deployment in
``deployment.py`` is a thin wrapper), so the protocol and the tick loop are tested directly and
through the real Serve gRPC proxy alike.

Stream protocol (see protos/microturn/v1/interaction.proto):
- OpenSession, first_chunk_index 0: a new session.
- OpenSession with live_from_chunk_index > first_chunk_index: the chunks before live_from are a
  replay (from a client whose replica lost the session); they rebuild the slot, produce no output.
- OpenSession with first_chunk_index > 0 and no replay: re-attach to a session this replica still
  holds (the stream dropped); a replica that does not hold it answers UNKNOWN_SESSION.
- A stream that ends without CloseSession detaches its session for ``detach_timeout_s``.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import logging
import time
from collections import Counter, deque
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import Link

from microturn.bus import subjects
from microturn.config import Settings
from microturn.engine import (
    ChunkInput,
    ChunkOutput,
    DelegationOpened,
    Engine,
    EngineError,
    EngineFullError,
    ResumePoint,
    SpeakingChanged,
)
from microturn.interaction import resume
from microturn.interaction.bridge import DelegationBridge, update_card, update_text
from microturn.interaction.errors import Code, StreamError
from microturn.interaction.model_loader import load_model, resolve_device
from microturn.interaction.session import Arrival, PendingUpdate, Session
from microturn.interaction.stats import TICK_BOUNDS_MS, ReplicaStats
from microturn.model import InteractionModel
from microturn.protocol.chunks import validate_session_id
from microturn.protocol.clock import ChunkClock, now_unix_ms, now_unix_us
from microturn.telemetry import RateLimitedLog, log_context, session_attributes, tracing
from microturn.v1 import chunk_pb2, delegation_pb2, interaction_pb2, media_pb2

log = logging.getLogger(__name__)
# Histogram buckets: a micro-turn is 200 ms, so the tick resolves 1..500 ms around it; a rebuild of a
# full span takes a few hundred ms on a CPU; a turn-taking target is 400 ms.
TICK_BUCKETS_MS = (1, 2, 3, 5, 7.5, 10, 15, 20, 30, 40, 50, 75, 100, 125, 150, 175, 200, 250, 300, 400, 500)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
REBUILD_BUCKETS_MS = (10, 25, 50, 100, 200, 300, 500, 750, 1000, 2000, 5000, 10000)
TURN_BUCKETS_MS = (100, 200, 300, 400, 500, 600, 800, 1000, 1500, 2000, 3000, 5000, 10000)
BUS_CLOSE_TIMEOUT_S = 3.0  # a drain must end inside Serve's graceful shutdown, whatever NATS does


@dataclass
class TickStats:
    """Counters of the tick loop (also exported as metrics); tests read them."""

    ticks: int = 0
    misses: int = 0
    outputs: int = 0
    opened: int = 0  # new sessions (not replays)
    rebuilt: int = 0  # sessions opened with a replay
    errors: Counter[str] = field(default_factory=Counter)  # typed errors sent, by code
    batches: deque[int] = field(default_factory=lambda: deque(maxlen=1000))
    steps: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=1000))  # (end, ms)
    # ticks per tick-time bucket (not cumulative): ticks_in[i] took at most TICK_BOUNDS_MS[i] (and more
    # than the bound before); slower ones are ticks - sum(ticks_in)
    ticks_in: list[int] = field(default_factory=lambda: [0] * len(TICK_BOUNDS_MS))
    turns: deque[float] = field(default_factory=lambda: deque(maxlen=200))  # turn latencies, ms


class InteractionCore:
    def __init__(
        self,
        settings: Settings,
        replica_id: str,
        model: InteractionModel | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self.settings = settings
        self.cfg = settings.interaction
        self.limits = settings.limits
        self.replica_id = replica_id
        torch.set_num_threads(self.cfg.torch_threads)
        model = model if model is not None else load_model(self.cfg)
        if model.cfg.chunk_ms != self.limits.chunk_ms:
            raise ValueError(
                f"model chunks are {model.cfg.chunk_ms} ms but limits.chunk_ms is {self.limits.chunk_ms}"
            )
        self.engine = Engine(
            model,
            self.cfg.session_slots,
            device=resolve_device(self.cfg.device),
            max_video_frames=self.limits.max_video_frames_per_chunk,
            precision=self.cfg.precision,
        )
        self.clock = ChunkClock(self.limits.chunk_ms)
        # every metric of a replica: which replica, which model version (no per-session labels)
        self._attrs = {"replica": replica_id, "version": self.engine.model_version}
        self.sessions: dict[str, Session] = {}
        self.stats = TickStats()
        self.draining = False
        self._drain_task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="engine-step")
        self._lock: asyncio.Lock | None = None
        self._tick_task: asyncio.Task[None] | None = None
        self._delegation_ids = itertools.count(1)
        self.bridge = DelegationBridge(settings, self._on_update) if self.cfg.bus else None
        self._background: set[asyncio.Task[object]] = set()
        self._work = asyncio.Event()  # set when a rebuild is waiting for spare time
        self._errlog = RateLimitedLog(log)
        self._tracer = trace.get_tracer("microturn.interaction")
        self._span_attrs = {"replica": replica_id, "model.version": self.engine.model_version}
        self._instruments(meter_provider or metrics.get_meter_provider())

    # -- metrics -------------------------------------------------------------------------------
    def _instruments(self, provider: metrics.MeterProvider) -> None:
        meter = provider.get_meter("microturn.interaction")
        self._m_tick = meter.create_histogram(
            "microturn_tick_duration", unit="ms", description="engine step of one tick (all its sessions)",
            explicit_bucket_boundaries_advisory=TICK_BUCKETS_MS,
        )  # fmt: skip
        self._m_batch = meter.create_histogram(
            "microturn_tick_batch_size", unit="{session}", description="sessions per tick",
            explicit_bucket_boundaries_advisory=BATCH_BUCKETS,
        )  # fmt: skip
        self._m_miss = meter.create_counter(
            "microturn_chunk_deadline_misses", unit="{chunk}",
            description="outputs later than one micro-turn after their input ended",
        )  # fmt: skip
        self._m_errors = meter.create_counter(
            "microturn_stream_errors", unit="{error}", description="typed errors sent, by code"
        )
        self._m_dropped = meter.create_counter(
            "microturn_chunks_dropped",
            unit="{chunk}",
            description="input chunks dropped by policy, by reason",
        )
        self._m_rebuild = meter.create_histogram(
            "microturn_session_rebuild_duration", unit="ms", description="replay received -> session live",
            explicit_bucket_boundaries_advisory=REBUILD_BUCKETS_MS,
        )  # fmt: skip
        self._m_rebuild_turns = meter.create_counter(
            "microturn_rebuild_turns", unit="{turn}",
            description="teacher-forced micro-turns run to rebuild sessions",
        )  # fmt: skip
        self._m_migrated = meter.create_counter(
            "microturn_sessions_migrated", unit="{session}",
            description="sessions a draining replica handed to another one (make before break)",
        )  # fmt: skip
        self._m_drain_deadline = meter.create_counter(
            "microturn_sessions_drain_deadline", unit="{session}",
            description="sessions still on a draining replica at its deadline, ended for their clients to recover",
        )  # fmt: skip
        self._m_turn = meter.create_histogram(
            "microturn_turn_latency", unit="ms",
            description="caller's end of turn (speech went quiet, or typed text) -> the model starts speaking",
            explicit_bucket_boundaries_advisory=TURN_BUCKETS_MS,
        )  # fmt: skip

        def lag(_: CallbackOptions) -> list[Observation]:
            """The worst attached session's lag (no per-session label: sessions are unbounded)."""
            now = now_unix_ms()
            lags = [
                self.clock.lag_ms(s.t0_ms + s.next_index * self.limits.chunk_ms, now)
                for s in list(self.sessions.values())
                if s.outbox is not None
            ]
            return [Observation(max(lags), self._attrs)] if lags else []

        meter.create_observable_gauge(
            "microturn_session_lag",
            [lag],
            unit="ms",
            description="wall time past the end of the next expected chunk, of the session furthest behind",
        )
        meter.create_observable_gauge(
            "microturn_sessions",
            [lambda _: [Observation(len(self.sessions), self._attrs)]],
            unit="{session}",
            description="sessions held (attached or detached)",
        )
        # a ratio without a unit: "1" would become a _ratio suffix through an OTel Collector but none
        # on the Python exporter's /metrics, and the dashboard queries one name
        meter.create_observable_gauge(
            "microturn_tick_utilisation",
            [lambda _: [Observation(self.tick_utilisation(), self._attrs)]],
            description="share of the last seconds' micro-turns the engine step took (the autoscaling signal)",
        )

    def report(self) -> ReplicaStats:
        """This replica's service report for the rollout controller (interaction/stats.py)."""
        turns = sorted(self.stats.turns)
        st = self.stats
        return ReplicaStats(
            replica=self.replica_id, version=self.engine.model_version, app=self.cfg.app_name,
            at_unix_ms=now_unix_ms(), sessions=len(self.sessions), opened=st.opened, rebuilt=st.rebuilt,
            outputs=st.outputs, misses=st.misses, errors=dict(st.errors), ticks=st.ticks,
            ticks_le=list(itertools.accumulate(st.ticks_in)),
            turn_p50_ms=round(turns[len(turns) // 2], 1) if turns else None, turns=len(turns),
        )  # fmt: skip

    async def _report_forever(self) -> None:
        """Publish the service report every ``stats_interval_s`` while the bus is up (a report that
        cannot go out is skipped: the next one carries the same totals)."""
        assert self.bridge is not None
        subject = subjects.replica_stats_subject(self.replica_id)
        while not self.draining:
            await asyncio.sleep(self.cfg.stats_interval_s)
            bus = self.bridge.bus
            if bus is not None and not bus.nc.is_closed:
                try:
                    await bus.nc.publish(subject, self.report().to_json())
                except Exception as exc:  # a reconnecting connection: the next report will do
                    log.debug("stats report not sent: %r", exc)

    def tick_utilisation(self, window_s: float = 5.0) -> float:
        """Share of the last ``window_s`` the engine step took (1.0: ticks fill every micro-turn)."""
        since = time.monotonic() - window_s
        return sum(ms for end, ms in list(self.stats.steps) if end >= since) / (window_s * 1000)

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Start the tick loop and the bus bridge (idempotent; needs the running event loop)."""
        if self._tick_task is None:
            self._lock = asyncio.Lock()
            self._work = asyncio.Event()
            self._tick_task = asyncio.create_task(self._tick_loop(), name="tick-loop")
            if self.bridge is not None:
                self.bridge.start()
                self._spawn(self._report_forever())

    def check_health(self) -> None:
        if self._tick_task is not None and self._tick_task.done():
            exc = self._tick_task.exception() if not self._tick_task.cancelled() else None
            raise RuntimeError(f"tick loop stopped: {exc!r}")

    async def drain(self, timeout_s: float | None = None) -> None:
        """Stop accepting sessions and hand the held ones to other replicas, make before break: each
        client is told DRAINING while its session keeps running here; it opens the session elsewhere
        with a replay and lets this stream go once the new owner's output has caught up, so the call
        has no output gap. With ``drain_policy`` wait, sessions first get ``drain_wait_s`` to end by
        themselves. Sessions still here ``drain_timeout_s`` after DRAINING are ended with
        UNKNOWN_SESSION (their clients then recover as after a loss). Called again (Serve's
        destructor after the stop watch began it), it waits for the same drain."""
        if self._drain_task is None:
            self._drain_task = asyncio.create_task(self._drain(timeout_s), name="drain")
        await asyncio.shield(self._drain_task)

    def _attached(self) -> list[Session]:
        return [s for s in self.sessions.values() if s.outbox is not None]

    async def _drain(self, timeout_s: float | None) -> None:
        self.draining = True
        loop = asyncio.get_running_loop()
        started = loop.time()
        held = len(self._attached())
        if self.cfg.drain_policy == "wait" and held:
            log.info("draining: waiting for %d sessions to end (up to %.0f s)", held, self.cfg.drain_wait_s)
            until = loop.time() + self.cfg.drain_wait_s
            while self._attached() and loop.time() < until:
                await asyncio.sleep(0.2)
        moving = self._attached()
        for session in moving:
            self._send_error(
                session,
                StreamError(
                    Code.ERROR_CODE_DRAINING,
                    f"replica {self.replica_id} is draining: open the session on another replica with a "
                    "replay; this stream serves it until then",
                    session.next_index,
                ),
            )
        deadline = loop.time() + (self.cfg.drain_timeout_s if timeout_s is None else timeout_s)
        while self._attached() and loop.time() < deadline:
            await asyncio.sleep(0.02)
        left = self._attached()
        moved = len([s for s in moving if s not in left])
        if moved:
            self._m_migrated.add(moved, self._attrs)
        if left:
            self._m_drain_deadline.add(len(left), self._attrs)
            log.warning(
                "drain deadline: %d sessions still here are ended for their clients to recover", len(left)
            )
        for session in list(self.sessions.values()):
            if session.outbox is not None:
                self._send_error(
                    session,
                    StreamError(
                        Code.ERROR_CODE_UNKNOWN_SESSION,
                        f"replica {self.replica_id} is shutting down: reopen the session with a replay",
                        session.next_index,
                    ),
                )
            await self._close(session, cancel_delegations=False)
        if self._tick_task is not None:
            self._tick_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tick_task
        if self.bridge is not None:
            try:
                async with asyncio.timeout(BUS_CLOSE_TIMEOUT_S):
                    await self.bridge.close()
            except TimeoutError:
                log.warning("the bus connection did not close within %.0f s; leaving it", BUS_CLOSE_TIMEOUT_S)
        self._executor.shutdown(wait=True)
        log.info(
            "drained",
            extra={"fields": {"migrated": moved, "ended_at_deadline": len(left),
                              "seconds": round(loop.time() - started, 2)}},
        )  # fmt: skip

    # -- the stream ----------------------------------------------------------------------------
    async def converse(
        self, requests: AsyncIterator[interaction_pb2.ClientMessage]
    ) -> AsyncIterator[interaction_pb2.ServerMessage]:
        self.start()
        try:
            first = await anext(requests)
        except StopAsyncIteration:
            return
        except Exception as exc:  # bytes that are not a ClientMessage (the transport could not parse them)
            yield self._error(
                Code.ERROR_CODE_PROTOCOL, f"the first message is not a ClientMessage ({type(exc).__name__})"
            )
            return
        if first.WhichOneof("kind") != "open":
            yield self._error(Code.ERROR_CODE_PROTOCOL, "the first message of a stream must be OpenSession")
            return
        op = first.open
        try:
            session = await self._open(op, requests)
        except StreamError as exc:
            yield self._reported(exc, op.session_id).to_message(op.session_id)
            return
        if session.outbox is not None:  # another stream had it: that one ends, this one takes over
            session.outbox.put_nowait(None)
        outbox: asyncio.Queue[interaction_pb2.ServerMessage | None] = asyncio.Queue()
        session.outbox, session.detached_at = outbox, None
        yield interaction_pb2.ServerMessage(
            accepted=interaction_pb2.SessionAccepted(
                session_id=session.session_id,
                replica_id=self.replica_id,
                model_version=self.engine.model_version,
                limits=interaction_pb2.SessionLimits(
                    chunk_ms=self.limits.chunk_ms,
                    sample_rate_hz=self.limits.sample_rate_hz,
                    max_video_frames_per_chunk=self.limits.max_video_frames_per_chunk,
                    video_width=self.limits.video_width,
                    video_height=self.limits.video_height,
                    max_text_bytes_per_chunk=self.limits.max_text_bytes_per_chunk,
                ),
                resume_span_chunks=self.engine.resume_span,
            )
        )
        reader = asyncio.create_task(self._read(session, requests, outbox))
        try:
            while (msg := await outbox.get()) is not None:
                yield msg
        finally:
            reader.cancel()
            if session.outbox is outbox and not session.closed:
                session.outbox, session.detached_at = None, time.monotonic()
                log.info("session detached", extra={"fields": {"session.id": session.session_id}})
                if self.draining:  # its client moved it elsewhere
                    self._spawn(self._close(session, cancel_delegations=False))

    async def _open(
        self, op: interaction_pb2.OpenSession, requests: AsyncIterator[interaction_pb2.ClientMessage]
    ) -> Session:
        try:
            sid = validate_session_id(op.session_id)
        except ValueError as exc:
            raise StreamError(Code.ERROR_CODE_PROTOCOL, f"OpenSession.session_id: {exc}") from None
        if self.draining:
            raise StreamError(Code.ERROR_CODE_DRAINING, f"replica {self.replica_id} is shutting down")
        if op.model_version and op.model_version != self.engine.model_version:
            raise StreamError(
                Code.ERROR_CODE_PROTOCOL,
                f"model version {op.model_version!r} is not served here (this replica serves "
                f"{self.engine.model_version!r})",
            )
        chunk_ms = self.limits.chunk_ms
        replay = op.live_from_chunk_index > op.first_chunk_index
        existing = self.sessions.get(sid)
        if existing is not None and not replay and op.first_chunk_index > 0:
            if op.first_chunk_index != existing.next_index:
                raise StreamError(
                    Code.ERROR_CODE_OUT_OF_ORDER,
                    f"session {sid} continues at chunk {existing.next_index}, not {op.first_chunk_index}",
                    op.first_chunk_index,
                )
            return existing
        if existing is None and not replay and op.first_chunk_index > 0:
            raise StreamError(
                Code.ERROR_CODE_UNKNOWN_SESSION,
                f"replica {self.replica_id} does not hold session {sid}: reopen it with a replay of its recent chunks",
                op.first_chunk_index,
            )
        if op.first_media_start_unix_ms % chunk_ms:
            raise StreamError(
                Code.ERROR_CODE_PROTOCOL,
                f"OpenSession.first_media_start_unix_ms {op.first_media_start_unix_ms} is not on a {chunk_ms} ms boundary",
            )
        if replay and op.live_from_chunk_index - op.first_chunk_index > 4 * self.engine.resume_span:
            raise StreamError(
                Code.ERROR_CODE_PROTOCOL,
                f"a replay of {op.live_from_chunk_index - op.first_chunk_index} chunks: a rebuild needs the last "
                f"{self.engine.resume_span} (send at most {4 * self.engine.resume_span})",
            )
        if existing is not None:  # a replay replaces whatever this replica had
            await self._close(existing, cancel_delegations=False)
        if self.engine.free_slots == 0:
            raise StreamError(
                Code.ERROR_CODE_OVER_CAPACITY,
                f"all {self.cfg.session_slots} session slots of replica {self.replica_id} are in use",
                retry_after_ms=self.cfg.retry_after_ms,
            )
        session = Session(
            session_id=sid,
            seed=op.seed,
            t0_ms=op.first_media_start_unix_ms - op.first_chunk_index * chunk_ms,
            next_index=op.first_chunk_index,
            live_from=max(op.live_from_chunk_index, op.first_chunk_index),
            limits=self.limits,
            max_pending=self.cfg.max_pending_chunks,
            max_backlog=self.cfg.max_backlog_chunks,
            context_utterances=self.cfg.context_utterances,
            text_queue_limit=self.engine.text_queue_limit,
        )
        assert self._lock is not None
        with self._tracer.start_as_current_span(
            "interaction.open",
            context=tracing.context_from(op.trace_context),
            attributes={**session_attributes(sid, op.first_chunk_index), **self._span_attrs,
                        "session.replay_chunks": op.live_from_chunk_index - op.first_chunk_index},
        ):  # fmt: skip
            if replay:
                session.rebuild = await self._read_replay(session, requests)
            raced = self.sessions.get(sid)
            if raced is not None:  # another stream opened it meanwhile: the later open wins
                await self._close(raced, cancel_delegations=False)
            async with self._lock:
                try:
                    if session.rebuild:
                        self.engine.resume_begin(sid, op.seed)
                    else:
                        self.engine.open(sid, op.seed)
                except EngineFullError as exc:
                    raise StreamError(
                        Code.ERROR_CODE_OVER_CAPACITY, str(exc), retry_after_ms=self.cfg.retry_after_ms
                    ) from None
                except EngineError as exc:
                    raise StreamError(Code.ERROR_CODE_PROTOCOL, f"OpenSession: {exc}") from None
        if session.rebuild:
            session.rebuild_last = session.rebuild[-1][1]
            session.rebuild_started = time.perf_counter()
            self._work.set()
        self.sessions[sid] = session
        if replay:
            self.stats.rebuilt += 1
        elif op.first_chunk_index == 0:
            self.stats.opened += 1
        if self.bridge is not None:
            self.bridge.follow(sid)
        log.info(
            "session opened",
            extra={"fields": {"session.id": sid, "replayed": session.live_from - op.first_chunk_index}},
        )
        return session

    async def _read_replay(
        self, session: Session, requests: AsyncIterator[interaction_pb2.ClientMessage]
    ) -> deque[tuple[ChunkInput, ResumePoint]]:
        """Read the replayed chunks of an OpenSession; keep the last ``resume_span`` with their resume
        points (checked here: they come back from the client)."""
        items: deque[tuple[ChunkInput, ResumePoint]] = deque(maxlen=self.engine.resume_span)
        while session.next_index < session.live_from:
            try:
                msg = await anext(requests)
            except StopAsyncIteration:
                raise StreamError(Code.ERROR_CODE_PROTOCOL, "stream ended inside the replay") from None
            except Exception as exc:
                raise StreamError(
                    Code.ERROR_CODE_PROTOCOL, f"an unreadable message in the replay ({exc})"
                ) from None
            k = session.next_index
            if msg.WhichOneof("kind") != "chunk" or msg.chunk.header.chunk_index != k:
                raise StreamError(
                    Code.ERROR_CODE_PROTOCOL, f"a replay continues with chunk {k} (only chunks, in order)", k
                )
            session.next_index = k + 1
            if not msg.chunk.HasField("resume"):
                continue  # never processed (its error was sent, e.g. a dropped chunk): the model skipped it
            rp = resume.from_proto(msg.chunk.resume, k)
            try:
                self.engine.validate_resume(rp)
            except EngineError as exc:
                raise StreamError(Code.ERROR_CODE_PROTOCOL, f"replayed chunk {k}: {exc}", k) from None
            chunk, _ = self._checked(session, msg.chunk)  # an invalid chunk is replayed as silence, as it ran
            items.append((chunk, rp))
            for text in chunk.text:
                session.note(delegation_pb2.SPEAKER_USER, text, k, typed=True)
        return items

    def _checked(self, session: Session, msg: media_pb2.InputChunk) -> tuple[ChunkInput, StreamError | None]:
        """The engine chunk for an input chunk of this session, or silence with the reason it failed."""
        k = msg.header.chunk_index
        try:
            chunk = session.to_engine_chunk(msg)
            self.engine.validate(chunk)
            return chunk, None
        except StreamError as exc:
            return session.silence(k), exc
        except Exception as exc:  # EngineError, and anything a hostile chunk could still raise
            return session.silence(k), StreamError(Code.ERROR_CODE_INVALID_CHUNK, f"chunk {k}: {exc}", k)

    async def _read(
        self,
        session: Session,
        requests: AsyncIterator[interaction_pb2.ClientMessage],
        outbox: asyncio.Queue[interaction_pb2.ServerMessage | None],
    ) -> None:
        try:
            async for msg in requests:
                kind = msg.WhichOneof("kind")
                if kind == "chunk":
                    try:
                        session.check_index(msg.chunk)
                        k = msg.chunk.header.chunk_index
                        session.check_not_ahead(k, now_unix_ms())
                    except StreamError as exc:
                        self._send_error(session, exc)
                        continue
                    if k > session.next_index:
                        self._send_error(
                            session,
                            StreamError(
                                Code.ERROR_CODE_OUT_OF_ORDER,
                                f"chunk {k} after a gap: chunks {session.next_index}..{k - 1} are skipped",
                                k,
                            ),
                        )
                    chunk, problem = self._checked(session, msg.chunk)
                    if problem is not None:
                        problem.message += "; the model hears silence for this micro-turn"
                        self._send_error(session, problem)
                    traced = tracing.span_context_from(msg.chunk.header.trace_context)
                    for dropped in session.accept(chunk, now_unix_us(), traced):
                        self._m_dropped.add(1, {"reason": "backlog", **self._attrs})
                        self._send_error(session, dropped)
                elif kind == "close":  # moved: it goes on elsewhere, and so do its delegations
                    await self._close(session, cancel_delegations=not msg.close.moved)
                    break
                else:
                    outbox.put_nowait(
                        self._error(
                            Code.ERROR_CODE_PROTOCOL,
                            f"unexpected {kind} on an open stream",
                            session.session_id,
                        )
                    )
        except Exception as exc:  # the transport failed (or a bug here): treat as a dropped stream
            log.info("stream of %s ended: %r", session.session_id, exc)
        outbox.put_nowait(None)

    async def _close(self, session: Session, cancel_delegations: bool) -> None:
        if session.closed:
            return
        session.closed = True
        session.pending.clear()
        self.sessions.pop(session.session_id, None)
        assert self._lock is not None
        async with self._lock:
            with contextlib.suppress(EngineError):
                self.engine.close(session.session_id)
        if self.bridge is not None:
            await self.bridge.end(session.session_id, cancel=cancel_delegations)
        if session.outbox is not None:
            session.outbox.put_nowait(None)
        log.info("session closed", extra={"fields": {"session.id": session.session_id}})

    def _spawn(self, coro) -> None:
        """Run a side task (acks, publishes) without losing its reference mid-flight."""
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _error(self, code: int, message: str, session_id: str = "") -> interaction_pb2.ServerMessage:
        return self._reported(StreamError(code, message)).to_message(session_id)

    def _reported(self, exc: StreamError, session_id: str = "") -> StreamError:
        """Count and log (rate-limited) an error about to be sent to a client."""
        name = interaction_pb2.ErrorCode.Name(exc.code)
        self._m_errors.add(1, {"code": name, **self._attrs})
        self.stats.errors[name] += 1
        self._errlog.log(name, f"{name}: {exc.message}", **{"session.id": session_id})
        return exc

    def _send_error(self, session: Session, exc: StreamError) -> None:
        session.send(self._reported(exc, session.session_id).to_message(session.session_id))

    # -- background updates --------------------------------------------------------------------
    def _on_update(self, session_id: str, update: delegation_pb2.BackgroundUpdate, ack) -> None:
        session = self.sessions.get(session_id)
        if session is None:
            return  # not acked: the next owner of the session gets it
        text = update_text(update)
        card = update_card(update)
        if text is None:
            if card is not None:
                session.cards.append(card)
            self._spawn(ack())
            return
        session.updates.append(PendingUpdate(update.delegation_id, update.seq, text, ack))

    # -- the tick ------------------------------------------------------------------------------
    async def _tick_loop(self) -> None:
        chunk_ms, grace = self.limits.chunk_ms, self.cfg.tick_grace_ms
        while True:
            now = now_unix_ms()
            tick_at = self.clock.floor(now - grace) + chunk_ms + grace
            await self._spare_work(until_ms=tick_at - self.cfg.spare_work_guard_ms)
            await asyncio.sleep(max(tick_at - now_unix_ms(), 0) / 1000)
            self._reap_detached()
            batch = [
                (s, s.pending.popleft())
                for s in list(self.sessions.values())
                if s.pending and not s.rebuilding
            ]
            if batch:
                await self._tick(batch)

    async def _spare_work(self, until_ms: int) -> None:
        """Between ticks, rebuild sessions reopened with a replay (one forced micro-turn per session per
        unit, batched) and let sessions that fell behind catch up (their chunks whose media has ended);
        each unit is short, and the lock is taken per unit, never for a whole rebuild."""
        while (now := now_unix_ms()) < until_ms:
            rebuilding = [s for s in self.sessions.values() if s.rebuilding]
            if rebuilding:
                await self._rebuild_unit(rebuilding)
                continue
            overdue = self._take_overdue(now)
            if overdue:
                await self._tick(overdue)
                continue
            self._work.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._work.wait(), (until_ms - now) / 1000)

    async def _rebuild_unit(self, sessions: list[Session]) -> None:
        items = [s.rebuild.popleft() for s in sessions]
        remaining = [len(s.rebuild) for s in sessions]
        done = [s for s in sessions if not s.rebuild]
        assert self._lock is not None

        def run() -> None:
            self.engine.resume_steps(items, remaining)
            for s in done:
                self.engine.resume_end(s.session_id, s.rebuild_last)

        try:
            async with self._lock:
                await asyncio.get_running_loop().run_in_executor(self._executor, run)
        except Exception:
            log.exception("rebuild step failed")
            if len(sessions) == 1:
                self._send_error(
                    sessions[0], StreamError(Code.ERROR_CODE_INTERNAL, "rebuilding the session failed")
                )
                await self._close(sessions[0], cancel_delegations=False)
                return
            for s, item in zip(sessions, items, strict=True):  # again one by one: only the culprit fails
                s.rebuild.appendleft(item)
            for s in sessions:
                await self._rebuild_unit([s])
            return
        self._m_rebuild_turns.add(len(items), self._attrs)
        for s in done:
            s.rebuild_last = None
            ms = (time.perf_counter() - s.rebuild_started) * 1000
            self._m_rebuild.record(ms, self._attrs)
            log.info(
                "session rebuilt",
                extra={"fields": {"session.id": s.session_id, "rebuild_ms": round(ms, 1)}},
            )

    def _take_overdue(self, now_ms: int) -> list[tuple[Session, ChunkInput]]:
        """Next queued chunk of every session whose queued chunk's media ended by ``now_ms``."""
        return [
            (s, s.pending.popleft())
            for s in list(self.sessions.values())
            if s.pending and not s.rebuilding and self.clock.end(s.t0_ms, s.pending[0].chunk_index) <= now_ms
        ]

    def _step(self, inputs: list[ChunkInput]) -> list:
        """The engine step (in the step thread), slowed by ``fault_tick_delay_ms`` when set."""
        results = self.engine.step_isolated(inputs)
        if self.cfg.fault_tick_delay_ms:
            time.sleep(self.cfg.fault_tick_delay_ms / 1000)
        return results

    async def _tick(self, batch: list[tuple[Session, ChunkInput]]) -> None:
        fed: list[list[PendingUpdate]] = []
        for s, chunk in batch:
            typed = sum(len(t.encode()) for t in chunk.text)
            updates = s.take_updates(self.engine.text_room(s.session_id) - typed)
            chunk.background.extend(u.text for u in updates)
            fed.append(updates)
        inputs = [chunk for _, chunk in batch]
        assert self._lock is not None
        links = [Link(a.trace, session_attributes(s.session_id, c.chunk_index))
                 for s, c in batch if (a := s.received.get(c.chunk_index)) is not None and a.trace is not None]  # fmt: skip
        with self._tracer.start_as_current_span(
            "interaction.tick", attributes={"batch.size": len(inputs), **self._span_attrs}, links=links
        ) as tick_span:
            t = time.perf_counter_ns()
            async with self._lock:
                results = await asyncio.get_running_loop().run_in_executor(self._executor, self._step, inputs)
            engine_us = (time.perf_counter_ns() - t) // 1000
        done_ms = now_unix_ms()
        st = self.stats
        st.ticks += 1
        st.batches.append(len(inputs))
        st.steps.append((time.monotonic(), engine_us / 1000))
        if (bucket := bisect.bisect_left(TICK_BOUNDS_MS, engine_us / 1000)) < len(TICK_BOUNDS_MS):
            st.ticks_in[bucket] += 1
        self._m_tick.record(engine_us / 1000, self._attrs)
        self._m_batch.record(len(inputs), self._attrs)
        for (s, chunk), out, updates in zip(batch, results, fed, strict=True):
            k = chunk.chunk_index
            if not isinstance(out, ChunkOutput):
                s.updates.extendleft(reversed(updates))  # not fed: they wait for the next tick
                s.received.pop(k, None)
                self._send_error(
                    s, StreamError(Code.ERROR_CODE_INTERNAL, f"chunk {k} was not processed: {out}", k)
                )
                continue
            media_start = s.t0_ms + k * self.limits.chunk_ms
            s.turns.heard(
                chunk.pcm, media_start, self.limits.chunk_ms, chunk.sample_rate, typed=bool(chunk.text)
            )
            if done_ms > media_start + 2 * self.limits.chunk_ms:
                st.misses += 1
                self._m_miss.add(1, self._attrs)
            msg = media_pb2.OutputChunk(
                header=chunk_pb2.ChunkHeader(
                    session_id=s.session_id,
                    chunk_index=k,
                    media_start_unix_ms=media_start,
                    duration_ms=self.limits.chunk_ms,
                ),
                audio=media_pb2.AudioPcm(
                    sample_rate_hz=self.limits.sample_rate_hz,
                    channels=1,
                    pcm_s16le=out.pcm.astype("<i2").tobytes(),
                ),
                text=out.text,
                model_version=out.model_version,
                engine_us=min(engine_us, 2**32 - 1),
                resume=resume.to_proto(out.resume),
            )
            arrival = s.received.pop(k, None)
            span = self._chunk_span(s, k, arrival, tick_span, engine_us)
            in_span = trace.use_span(span, end_on_exit=True) if span is not None else contextlib.nullcontext()
            with in_span, log_context(session_id=s.session_id, chunk_index=k):
                self._events(
                    s, k, out.events, updates, msg, done_ms
                )  # (a delegation opened here is this span's child)
                s.note(delegation_pb2.SPEAKER_MODEL, out.text, k)
                if arrival is not None:
                    msg.header.hops.add(hop="interaction-recv", sent_unix_us=arrival.received_us)
                msg.header.hops.add(hop="interaction", sent_unix_us=now_unix_us())
                st.outputs += 1
                s.send(interaction_pb2.ServerMessage(chunk=msg))
            for u in updates:
                if u.ack is not None:
                    self._spawn(u.ack())

    def _chunk_span(
        self, s: Session, k: int, arrival: Arrival | None, tick: trace.Span, engine_us: int
    ) -> trace.Span | None:
        """This micro-turn on this replica, in the call's trace, from the chunk's arrival to its output
        (linked to the tick that computed it); None for a chunk that came without a trace context."""
        if arrival is None or arrival.trace is None:
            return None
        return self._tracer.start_span(
            "interaction.chunk",
            context=tracing.parent(arrival.trace),
            attributes={**session_attributes(s.session_id, k), **self._span_attrs, "engine.us": engine_us},
            links=[Link(tick.get_span_context())],
            start_time=arrival.received_us * 1000,
        )

    def _events(
        self,
        s: Session,
        k: int,
        events,
        updates: list[PendingUpdate],
        msg: media_pb2.OutputChunk,
        done_ms: int,
    ) -> None:
        for u in updates:
            msg.events.add().background_update.CopyFrom(
                media_pb2.BackgroundUpdateConsumed(delegation_id=u.delegation_id, seq=u.seq, text=u.text)
            )
            s.note(delegation_pb2.SPEAKER_BACKGROUND, u.text, k)
        while s.cards:
            msg.events.add().ui_card.CopyFrom(s.cards.popleft())
        for ev in events:
            if isinstance(ev, SpeakingChanged):
                msg.events.add().speaking.speaking = ev.speaking
                if ev.speaking and (ms := s.turns.answered(done_ms)) is not None:
                    self._m_turn.record(ms, {"version": self.engine.model_version})
                    self.stats.turns.append(ms)
            elif isinstance(ev, DelegationOpened):
                delegation_id = f"{s.session_id}-{k}-{next(self._delegation_ids)}"
                msg.events.add().delegation_opened.CopyFrom(
                    media_pb2.DelegationOpened(delegation_id=delegation_id, request=ev.request)
                )
                log.info("delegation %s: %s", delegation_id, ev.request)
                if self.bridge is not None:
                    request = delegation_pb2.DelegationRequest(
                        delegation_id=delegation_id,
                        session_id=s.session_id,
                        chunk_index=k,
                        context=delegation_pb2.ContextPackage(
                            utterances=list(s.transcript), request=ev.request
                        ),
                        deadline_unix_ms=now_unix_ms() + int(self.cfg.delegation_deadline_s * 1000),
                    )
                    self._spawn(self.bridge.delegate(request))

    def _reap_detached(self) -> None:
        now = time.monotonic()
        for s in list(self.sessions.values()):
            if s.detached_at is not None and now - s.detached_at > self.cfg.detach_timeout_s:
                log.info("reaping detached session %s", s.session_id)
                self._spawn(self._close(s, cancel_delegations=True))
