"""A client of the Interaction service for one session, with the recovery protocol built in.

It keeps the session's recent input chunks, each answered one with the resume state of its output,
and when the replica answers UNKNOWN_SESSION or DRAINING, the stream breaks, or outputs stop coming
(``stall_timeout_s``), it reopens the stream — the session-affinity router sends it to whichever
replica owns the session now — replaying the last ``resume_span_chunks`` answered chunks (all a
replica needs to rebuild the session exactly, whatever its age) and resending the ones in flight.
Background updates the model consumed (BackgroundUpdateConsumed events) are kept with their input
chunk. The same replay moves a session to another model version (``move_to``: a rollout retiring its
version). The edge uses it for every call; tests and benchmarks use it directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from asyncio import FIRST_COMPLETED
from collections import OrderedDict

import grpc

from microturn.interaction.affinity import stream_metadata
from microturn.interaction.errors import Code
from microturn.protocol.chunks import stamp
from microturn.protocol.clock import CHUNK_MS
from microturn.v1 import interaction_pb2, interaction_pb2_grpc, media_pb2

log = logging.getLogger(__name__)

OPEN_ATTEMPTS = 4  # an OpenSession unanswered for 1, 2, 4 and 8 s (plus replay time) is given up
STALL_BACKOFF = 4  # the stall limit grows to at most this multiple of stall_timeout_s ...
STALL_RESET_S = 30.0  # ... and is back to it after output has flowed this long since the last stall
MOVE_RETRY_S = 1.0  # a failed move to another version is tried again after 1, 2, 4, 8, 8 ... s
MOVE_RETRY_MAX_S = 8.0
RECOVERABLE = {Code.ERROR_CODE_UNKNOWN_SESSION, Code.ERROR_CODE_DRAINING}  # DRAINING: migrate first
# RESOURCE_EXHAUSTED: Serve's queue in front of the replicas was full (backpressure).
RECOVERABLE_STATUS = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL,
                      grpc.StatusCode.UNKNOWN, grpc.StatusCode.ABORTED, grpc.StatusCode.RESOURCE_EXHAUSTED}  # fmt: skip


class SessionRejected(Exception):
    """The service refused to open the session (e.g. over capacity); ``error.retryable`` says
    whether trying again later may work."""

    def __init__(self, error: interaction_pb2.Error) -> None:
        super().__init__(f"{interaction_pb2.ErrorCode.Name(error.code)}: {error.message}")
        self.error = error


class SessionClosed(Exception):
    """The stream ended after this client closed the session."""


class _NextStreamFailed(Exception):
    """The stream opened for a planned migration broke before taking over."""


class _StreamCancelled(Exception):
    """The session's stream was cancelled on this side while no one meant to end it: grpc.aio cancels
    the whole RPC when a task is cancelled in the middle of one of its writes or reads (a sender stopped
    mid-write, say). To the session that is a broken stream like any other."""


class InteractionSession:
    def __init__(
        self,
        channel: grpc.aio.Channel,
        app_name: str,
        session_id: str,
        *,
        seed: int = 0,
        model_version: str = "",
        t0_ms: int,
        chunk_ms: int = CHUNK_MS,
        window_chunks: int | None = None,
        max_recoveries: int = 10,  # per minute: more is a crash loop
        stall_timeout_s: float = 2.0,
        open_timeout_s: float = 1.0,
        hop: str = "client",
        trace_context: dict[str, str] | None = None,
    ) -> None:
        """``window_chunks``: answered chunks kept for a replay (default: the replica's
        ``resume_span_chunks``, the fewest an exact rebuild needs). ``stall_timeout_s``: with chunks in
        flight and no message for this long, the stream counts as lost (a replica that hangs, or a
        network that drops packets silently, is noticed without waiting for TCP). ``open_timeout_s``: a
        reopen not answered this long is tried again (a stream routed to a replica that just died)."""
        self.stub = interaction_pb2_grpc.InteractionStub(channel)
        self.app_name, self.session_id, self.seed = app_name, session_id, seed
        self.model_version = model_version  # asked for in every OpenSession ("": the replica's)
        self.t0_ms, self.chunk_ms = t0_ms, chunk_ms
        self.window_chunks = window_chunks
        self.max_recoveries = max_recoveries
        self.stall_timeout_s = stall_timeout_s
        self.open_timeout_s = open_timeout_s
        # the stall limit in force: doubled (up to STALL_BACKOFF x) after each stall, back to
        # stall_timeout_s once output has flowed STALL_RESET_S, so a replica that is only slow (a
        # loaded machine) is not flooded with replays that make it slower still
        self._stall_s = stall_timeout_s
        self._stalled_at = -float("inf")
        self.hop = hop
        # the caller's session span (telemetry.tracing.carrier): every stream of the session joins it
        self.trace_context = dict(trace_context or {})
        self.window: OrderedDict[int, media_pb2.InputChunk] = OrderedDict()
        self.next_index = 0  # next chunk to send
        self.answered = -1  # last chunk with an output
        self.recoveries = 0
        self._recovered_at: list[float] = []  # loop times of the recoveries of the last minute
        self.accepted: interaction_pb2.SessionAccepted | None = None
        self._call: grpc.aio.StreamStreamCall | None = None
        self._read: asyncio.Task | None = None  # the pending read of _call (kept across stall checks)
        self._closing = False
        self._sent_at: dict[int, float] = {}  # chunk index -> loop time it was sent, until answered
        self._last_message = 0.0  # loop time of the last message read
        # a planned migration (the replica said DRAINING): the stream being opened on the next owner
        self._migration: asyncio.Future | None = None
        self._next_call: grpc.aio.StreamStreamCall | None = None
        self._next_accepted: interaction_pb2.SessionAccepted | None = None
        self._next_read: asyncio.Task | None = None
        self._catch_up_to = -1  # the next owner takes over with its first output after this chunk
        self._letting_go: set[asyncio.Task] = set()  # old streams being closed after a switch
        self.migrations = 0
        self.switched_at: list[int] = []  # per migration: the first chunk index the new owner answered
        self._moving = False  # move_to asked for another version and no stream of it has taken over
        self._retry_move_at: float | None = None  # loop time to try the move again after a failure
        self._move_retry_s = MOVE_RETRY_S  # the wait before the next try (doubles, to MOVE_RETRY_MAX_S)

    # -- opening and recovery ------------------------------------------------------------------
    async def open(self) -> interaction_pb2.SessionAccepted:
        return await self._open(first=0, live_from=0)

    async def _open(self, first: int, live_from: int) -> interaction_pb2.SessionAccepted:
        """Open the stream; an open not answered in time (a loaded replica, one that just died) is
        tried again, each time waiting longer (``_connect``), up to ``OPEN_ATTEMPTS`` times. A
        rejection (over capacity, a bad request) is the caller's to handle: ``SessionRejected``."""
        for attempt in range(OPEN_ATTEMPTS):
            try:
                call, accepted = await self._connect(first, live_from, owner=None, attempt=attempt)
                break
            except (grpc.aio.AioRpcError, ConnectionError) as exc:
                if attempt == OPEN_ATTEMPTS - 1:
                    raise
                log.info("session %s: open failed (%s); retrying", self.session_id, exc)
        self._set_call(call)  # from here on send() writes directly (no await since _connect's last write)
        return accepted

    def _set_call(self, call: grpc.aio.StreamStreamCall) -> None:
        """``call`` is the session's stream now; a read still pending on the one before is dropped."""
        if self._read is not None:
            self._read.cancel()
            self._read = None
        self._call = call

    async def _connect(
        self, first: int, live_from: int, owner: str | None, attempt: int = 0
    ) -> tuple[grpc.aio.StreamStreamCall, interaction_pb2.SessionAccepted]:
        """A new stream: OpenSession, the replay, then every chunk not yet answered. The caller registers
        the call right away (no await in between), so the chunks ``send`` adds later reach it too.
        ``owner``: the replica to try first (the one that held the session), None: the least loaded."""
        # taken now: while the replay is written (slowly, to a loaded replica) the current stream goes
        # on answering and the window drops what falls out of the resume span
        replay = [self.window[k] for k in range(first, live_from)]
        metadata = stream_metadata(self.app_name, self.session_id, owner) + tuple(self.trace_context.items())
        call = self.stub.Converse(metadata=metadata)
        await call.write(
            interaction_pb2.ClientMessage(
                open=interaction_pb2.OpenSession(
                    session_id=self.session_id,
                    seed=self.seed,
                    first_chunk_index=first,
                    first_media_start_unix_ms=self.t0_ms + first * self.chunk_ms,
                    live_from_chunk_index=live_from,
                    model_version=self.model_version,
                    trace_context=self.trace_context,
                )
            )
        )
        for chunk in replay:
            await call.write(interaction_pb2.ClientMessage(chunk=chunk))
        try:
            # a replay costs the replica time; a reopen tried again gets longer (a loaded replica)
            async with asyncio.timeout(
                (self.open_timeout_s + 0.01 * (live_from - first)) * 2 ** min(attempt, 3)
            ):
                reply = await call.read()
        except TimeoutError:
            call.cancel()
            raise ConnectionError("no answer to OpenSession") from None
        self._last_message = asyncio.get_running_loop().time()
        if reply is grpc.aio.EOF:
            raise ConnectionError("the stream ended before the session was accepted")
        if reply.WhichOneof("kind") == "error":
            call.cancel()
            raise SessionRejected(reply.error)
        self.accepted = reply.accepted
        k = live_from
        while k < self.next_index:  # chunks in flight when the last stream broke, and new ones
            chunk = self.window.get(k)
            if chunk is None:  # answered long ago by the stream still running: this one is stale
                call.cancel()
                raise ConnectionError(f"chunk {k} left the window while the stream opened")
            await call.write(interaction_pb2.ClientMessage(chunk=chunk))
            k += 1
        return call, reply.accepted

    def _replay_range(self) -> tuple[int, int]:
        live_from = self.answered + 1
        span = self.accepted.resume_span_chunks if self.accepted is not None else 0
        return max(next(iter(self.window), live_from), live_from - span), live_from

    async def recover(self) -> interaction_pb2.SessionAccepted:
        """Reopen on the session's current owner, replaying what was answered."""
        self.cancel()
        self.recoveries += 1
        now = asyncio.get_running_loop().time()
        self._recovered_at = [t for t in self._recovered_at if now - t < 60.0] + [now]
        if len(self._recovered_at) > self.max_recoveries:  # a crash loop, not a fault now and then
            raise ConnectionError(
                f"session {self.session_id}: gave up after {self.max_recoveries} recoveries in a minute"
            )
        owner = self.accepted.replica_id if self.accepted is not None else None
        call, accepted = await self._reconnect("recovered on", attempts=None, owner=owner)
        self._set_call(call)  # (no await since _connect's last write)
        return accepted

    async def _reconnect(
        self, what: str, attempts: int | None, owner: str | None
    ) -> tuple[grpc.aio.StreamStreamCall, interaction_pb2.SessionAccepted]:
        """Open the session with a replay (on ``owner`` if it still serves, else wherever the router
        puts it), retrying with backoff (for ever, or ``attempts`` times) while the answer is retryable."""
        delay, tried = 0.05, 0
        while True:
            first, live_from = self._replay_range()
            try:
                call, accepted = await self._connect(first, live_from, owner, tried)
                log.info("session %s %s replica %s (replayed %d chunks)",
                         self.session_id, what, accepted.replica_id, live_from - first)  # fmt: skip
                return call, accepted
            except SessionRejected as exc:
                if not exc.error.retryable:
                    log.warning("session %s: %s failed: %s", self.session_id, what, exc)
                    raise
                log.info("session %s: %s: %s; retrying", self.session_id, what, exc)
                await asyncio.sleep(max(delay, exc.error.retry_after_ms / 1000))
            except (grpc.aio.AioRpcError, ConnectionError) as exc:
                log.info("session %s: reopen failed (%s); retrying", self.session_id, exc)
                await asyncio.sleep(delay)
            tried += 1
            if attempts is not None and tried >= attempts:
                raise ConnectionError(f"session {self.session_id}: no replica took it after {tried} tries")
            delay = min(delay * 2, 1.0)

    # -- planned migration ---------------------------------------------------------------------
    def _start_migration(self) -> None:
        """The replica is draining but still serving: open the session's next owner in the background
        (make before break). ``receive`` switches over when the new stream's output catches up."""
        if self._migration is None and self._next_call is None:
            self._migration = asyncio.ensure_future(self._migrate())

    async def _migrate(self) -> None:
        # not the draining owner: any other replica
        call, accepted = await self._reconnect("migrating to", attempts=self.max_recoveries, owner=None)
        self._next_call, self._next_accepted = call, accepted  # (no await since _connect's last write)
        self._catch_up_to = self.answered

    def _migration_failed(self, why: object) -> None:
        """The next owner could not be opened or failed before taking over. A move (``move_to``) is
        tried again after a backoff (``MOVE_RETRY_S``, doubling): the version it leaves is going
        away, so giving up would leave the call to break when it goes. A migration off a draining
        replica starts again at that replica's next DRAINING answer."""
        log.warning("session %s: migration to %s failed (%s)%s", self.session_id,
                    self.model_version or "another replica", why, "; retrying" if self._moving else "")  # fmt: skip
        self._drop_migration()
        if self._moving:
            self._retry_move_at = asyncio.get_running_loop().time() + self._move_retry_s
            self._move_retry_s = min(2 * self._move_retry_s, MOVE_RETRY_MAX_S)

    def move_to(self, channel: grpc.aio.Channel, app_name: str, model_version: str) -> None:
        """Move the session to another model version (its own is being retired, and the two are
        replay-compatible: the new one can rebuild the session from its chunks and their resume state).
        From now on every stream opens there; a planned migration starts at once, so the current stream
        keeps answering until the new one has caught up."""
        self.stub = interaction_pb2_grpc.InteractionStub(channel)
        self.app_name, self.model_version = app_name, model_version
        self._moving = True  # until a stream of the new version takes over
        self._move_retry_s = MOVE_RETRY_S
        self._drop_migration()  # one in progress would land on the old version
        self._start_migration()

    def _drop_migration(self, release: bool = True) -> None:
        """Give up the migration in progress. A stream already open on the next owner is let go
        (``release``: cancelled, it would hold a slot there for ``detach_timeout_s``) or, when the
        session itself is being cancelled, cancelled."""
        if self._migration is not None:
            self._migration.cancel()
        if self._next_call is not None and release:
            self._release(self._next_call, self._next_read)
        else:
            for t in (self._next_read, self._next_call):
                if t is not None:
                    t.cancel()
        self._migration = self._next_read = self._next_call = None

    def _release(self, call: grpc.aio.StreamStreamCall, read: asyncio.Future | None) -> None:
        task = asyncio.ensure_future(self._let_go(call, read))
        self._letting_go.add(task)
        task.add_done_callback(self._letting_go.discard)

    def _switch_to_next(self) -> None:
        """The new owner answers new chunks: it becomes the stream; the one left is let go."""
        assert self._next_call is not None and self._next_accepted is not None
        if self._call is not None:  # (its pending read goes with it: cancelling one cancels the RPC)
            self._release(self._call, self._read)
        elif self._read is not None:
            self._read.cancel()
        self._call, self._read, self.accepted = self._next_call, self._next_read, self._next_accepted
        self._next_call = self._next_read = self._migration = None
        self._moving = False
        self.migrations += 1
        log.info("session %s: migrated to replica %s", self.session_id, self.accepted.replica_id)

    async def _let_go(
        self, call: grpc.aio.StreamStreamCall, read: asyncio.Future | None = None, timeout_s: float = 2.0
    ) -> None:
        """Tell the replica left behind that the session moved (it frees the session now, not after
        ``detach_timeout_s``, and keeps its delegations, which follow it), then read the stream to its
        end (``read``: a read already pending on it)."""
        close = interaction_pb2.CloseSession(session_id=self.session_id, reason="moved", moved=True)
        try:
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError,
                                     TimeoutError):  # fmt: skip
                await call.write(interaction_pb2.ClientMessage(close=close))
                await call.done_writing()
                async with asyncio.timeout(timeout_s):
                    if read is not None:
                        await read
                    while await call.read() is not grpc.aio.EOF:
                        pass
        finally:
            if read is not None:
                read.cancel()
            call.cancel()

    # -- traffic -------------------------------------------------------------------------------
    async def send(self, chunk: media_pb2.InputChunk) -> None:
        """Send the next chunk (its index must be ``next_index``)."""
        if chunk.header.chunk_index != self.next_index:
            raise ValueError(f"chunk {chunk.header.chunk_index} sent, next is {self.next_index}")
        stamp(chunk.header, self.hop)
        self.window[self.next_index] = chunk
        self._sent_at[self.next_index] = asyncio.get_running_loop().time()
        self.next_index += 1
        if self._call is None:
            if self.accepted is None:
                raise RuntimeError("open() the session first")
            return  # recovering: the reopened stream sends it from the window
        # A broken stream is noticed (and recovered) by the read side; the chunk is in the window.
        msg = interaction_pb2.ClientMessage(chunk=chunk)
        for call in (self._call, self._next_call):
            if call is not None:
                with contextlib.suppress(
                    grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError
                ):
                    await call.write(msg)

    async def receive(self) -> interaction_pb2.ServerMessage:
        """The next output chunk or (non-recoverable) error; recovers and migrates transparently."""
        while True:
            assert self._call is not None, "open() first"
            try:
                from_next, msg = await self._read_or_stall()
            except TimeoutError:
                log.info("session %s: no output for %.1f s; recovering", self.session_id, self._stall_s)
                self._stalled_at = asyncio.get_running_loop().time()
                self._stall_s = min(2 * self._stall_s, STALL_BACKOFF * self.stall_timeout_s)
                await self._recover_or_switch()
                continue
            except _NextStreamFailed:
                self._migration_failed("its stream broke")
                continue
            except _StreamCancelled:
                if self._closing:
                    raise SessionClosed(self.session_id) from None
                log.info("session %s: stream cancelled locally; recovering", self.session_id)
                await self._recover_or_switch()
                continue
            except grpc.aio.AioRpcError as exc:
                if self._closing:
                    raise SessionClosed(self.session_id) from None
                if exc.code() not in RECOVERABLE_STATUS:
                    raise
                log.info("session %s: stream failed (%s); recovering", self.session_id, exc.code().name)
                await self._recover_or_switch()
                continue
            if msg is grpc.aio.EOF:
                if self._closing:
                    raise SessionClosed(self.session_id)
                await self._recover_or_switch()
                continue
            kind = msg.WhichOneof("kind")
            if from_next:
                if kind != "chunk":  # the new owner failed before taking over: stay, try again later
                    self._migration_failed(msg.error.message if kind == "error" else kind)
                    continue
                index = msg.chunk.header.chunk_index
                if index <= self._catch_up_to:
                    continue  # still catching up with what was answered when it opened
                # it answers chunks as they come now: take it, even when it runs behind the old owner
                # (a busier replica; waiting for it to overtake could mean waiting for ever)
                self._switch_to_next()
                self.switched_at.append(index)
                if index <= self.answered:
                    continue  # the old owner answered this one already; the new one goes on from here
            elif kind == "error" and msg.error.code == Code.ERROR_CODE_DRAINING:
                self._start_migration()
                continue
            elif kind == "error" and msg.error.code in RECOVERABLE:
                await self._recover_or_switch()
                continue
            elif kind == "chunk" and msg.chunk.header.chunk_index <= self.answered:
                continue  # answered already (by the new owner during a switch)
            if kind == "chunk":
                self._answered(msg.chunk)
            return msg

    async def _recover_or_switch(self) -> None:
        """The current stream is gone: take over the migration stream if there is one, else recover."""
        if self._migration is not None and self._next_call is None:
            with contextlib.suppress(Exception):
                await self._migration
        if self._next_call is not None:
            self._switch_to_next()
            return
        self._drop_migration()
        await self.recover()

    async def _read_or_stall(self) -> tuple[bool, object]:
        """(from the migration stream?, the next message); TimeoutError when chunks are in flight and
        none was answered for ``stall_timeout_s``; _NextStreamFailed when the migration stream broke;
        _StreamCancelled when the stream was cancelled on this side."""
        assert self._call is not None
        loop = asyncio.get_running_loop()
        while True:
            if self._read is None:
                self._read = asyncio.ensure_future(self._call.read())
            if self._next_call is not None and self._next_read is None:
                self._next_read = asyncio.ensure_future(self._next_call.read())
            waits = {t for t in (self._read, self._next_read, self._migration) if t is not None}
            done, _ = await asyncio.wait(waits, timeout=self._stall_s / 4, return_when=FIRST_COMPLETED)
            if self._migration in done:
                if self._migration.cancelled() or self._migration.exception() is not None:
                    self._migration_failed(
                        "cancelled" if self._migration.cancelled() else self._migration.exception()
                    )
                else:
                    self._migration = None
                continue
            if self._retry_move_at is not None and loop.time() >= self._retry_move_at:
                self._retry_move_at = None
                self._start_migration()
            if self._next_read is not None and self._next_read in done:
                read, self._next_read = self._next_read, None
                if read.cancelled() or read.exception() is not None:
                    raise _NextStreamFailed
                return True, read.result()
            if self._read in done:
                read, self._read = self._read, None
                if read.cancelled():  # (this task's own cancellation would have ended the wait above)
                    raise _StreamCancelled
                self._last_message = loop.time()
                return False, read.result()
            oldest = next(iter(self._sent_at.values()), None)
            if oldest is not None and loop.time() - max(oldest, self._last_message) > self._stall_s:
                raise TimeoutError

    def _answered(self, out: media_pb2.OutputChunk) -> None:
        k = out.header.chunk_index
        if self._stall_s != self.stall_timeout_s and self._last_message - self._stalled_at > STALL_RESET_S:
            self._stall_s = self.stall_timeout_s
        self.answered = max(self.answered, k)
        for i in [i for i in self._sent_at if i <= k]:
            del self._sent_at[i]
        keep = self.window_chunks
        if keep is None:
            keep = self.accepted.resume_span_chunks if self.accepted is not None else 0
        while self.window and next(iter(self.window)) <= self.answered - keep:
            self.window.popitem(last=False)
        chunk = self.window.get(k)
        if chunk is None:
            return
        chunk.resume.CopyFrom(out.resume)
        for ev in out.events:
            if ev.WhichOneof("kind") == "background_update":
                u = ev.background_update
                chunk.text.add(
                    text=u.text, source=media_pb2.TEXT_SOURCE_BACKGROUND, delegation_id=u.delegation_id
                )

    async def close_writing(self, reason: str = "") -> None:
        """Send CloseSession and half-close; a reader then gets SessionClosed once the server ends
        the stream. (Cancelling the stream instead would only detach the session.)"""
        self._closing = True
        if self._call is None:
            return
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError):
            await self._call.write(
                interaction_pb2.ClientMessage(
                    close=interaction_pb2.CloseSession(session_id=self.session_id, reason=reason)
                )
            )
            await self._call.done_writing()

    async def close(self, reason: str = "", timeout_s: float = 2.0) -> None:
        """Close the session (no other task may be reading the stream)."""
        if self._call is None:
            return
        await self.close_writing(reason)
        with contextlib.suppress(SessionClosed, grpc.aio.AioRpcError, TimeoutError):
            async with asyncio.timeout(timeout_s):
                while True:
                    await self.receive()
        self.cancel()

    def cancel(self) -> None:
        self._drop_migration(release=False)
        for task in self._letting_go:
            task.cancel()
        if self._read is not None:
            self._read.cancel()
            self._read = None
        if self._call is not None:
            self._call.cancel()
            self._call = None
