"""The replica's side of the bus: delegation events go out to the background model as
DelegationRequests (de-duplicated by id), and each session's background updates come back into
the session's queue for the next tick's text-in.

An update is acked only after the tick that fed it to the model; the output chunk of that tick
carries a BackgroundUpdateConsumed event, so the client keeps the update with its input chunk and
a replay elsewhere feeds it again at the same micro-turn. An update not yet fed when a replica
dies stays unacked on the session's durable consumer and is redelivered to the next owner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from microturn.bus import Bus, DelegationClient, Rejections, SessionUpdates, rejects
from microturn.config import Settings
from microturn.v1 import delegation_pb2, media_pb2

log = logging.getLogger(__name__)

FOLLOW_RETRY_S = 1.0  # wait before reopening a session's updates after a failure
UpdateSink = Callable[[str, delegation_pb2.BackgroundUpdate, Callable[[], object]], None]


def update_text(update: delegation_pb2.BackgroundUpdate) -> str | None:
    """What of an update enters the model: final answers and errors; partials and cards do not
    (a card goes to the client as an event, partials are superseded by the final text)."""
    kind = update.WhichOneof("kind")
    if kind == "final":
        return update.final.text
    if kind == "error":
        return f"(the background model could not help: {update.error.message})"
    return None


def update_card(update: delegation_pb2.BackgroundUpdate) -> media_pb2.UiCard | None:
    return update.ui_card if update.WhichOneof("kind") == "ui_card" else None


class DelegationBridge:
    def __init__(self, settings: Settings, sink: UpdateSink) -> None:
        self.settings = settings
        self.sink = sink
        self.bus: Bus | None = None
        self.client: DelegationClient | None = None
        self._followers: dict[str, asyncio.Task[None]] = {}
        self._connected = asyncio.Event()
        self._connect_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._connect_task is None:
            self._connect_task = asyncio.create_task(self._connect())

    async def _connect(self) -> None:
        while self.bus is None:
            try:
                self.bus = await Bus.connect(self.settings.nats, self.settings.bus, name="interaction")
            except Exception as exc:  # NATS not up yet: sessions work meanwhile, delegations wait
                log.warning("bus not reachable (%s); retrying", exc)
                await asyncio.sleep(1.0)
        self.client = DelegationClient(self.bus)
        self._connected.set()
        log.info("bus connected at %s", self.settings.nats.client_url)

    async def wait_connected(self, timeout_s: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), timeout_s)
        return self._connected.is_set()

    # -- per session ---------------------------------------------------------------------------
    def follow(self, session_id: str) -> None:
        if session_id not in self._followers:
            self._followers[session_id] = asyncio.create_task(self._follow(session_id))

    async def _follow(self, session_id: str) -> None:
        """Hand the session's updates to the sink until the session ends.

        Whatever goes wrong (the consumer cannot be opened while NATS is away, an update the sink
        chokes on) is logged and counted, and following goes on: a dead follower would leave the
        session without updates for the rest of its life. Updates are validated and cut to their
        limits by ``SessionUpdates`` before they get here."""
        await self._connected.wait()
        assert self.client is not None
        rejections = Rejections.for_kind("update", self.settings.bus)
        while True:
            try:
                updates: SessionUpdates = await self.client.session_updates(session_id)
            except Exception as exc:
                rejections.warn("follow", "cannot follow updates of %s yet (%s); retrying", session_id, exc)
                await asyncio.sleep(FOLLOW_RETRY_S)
                continue
            try:
                async for delivery in updates:
                    try:
                        self.sink(session_id, delivery.update, delivery.ack)
                    except Exception as exc:
                        # Deterministic for this update: terminate it rather than hold it for ever.
                        rejections.record(
                            rejects.HANDLER_FAILED,
                            f"update {delivery.update.delegation_id}:{delivery.update.seq}: "
                            f"{type(exc).__name__}: {exc}",
                            f" for {session_id}",
                        )
                        await updates.drop(delivery)
            except Exception as exc:
                rejections.warn("follow", "following updates of %s failed (%s); reopening", session_id, exc)
                await asyncio.sleep(FOLLOW_RETRY_S)
            finally:
                await updates.close(delete=False)

    async def end(self, session_id: str, cancel: bool) -> None:
        """Stop following a session; ``cancel`` (the session closed) also cancels its delegations
        and deletes its update consumer."""
        task = self._followers.pop(session_id, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if cancel and self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.cancel(session_id, reason=delegation_pb2.CANCEL_REASON_SESSION_CLOSED)
            with contextlib.suppress(Exception):
                await SessionUpdates(self.client.bus, session_id).close(delete=True)

    async def delegate(self, request: delegation_pb2.DelegationRequest) -> None:
        await self._connected.wait()
        assert self.client is not None
        try:
            await self.client.delegate(request)
        except Exception:
            log.exception("could not publish delegation %s", request.delegation_id)

    async def close(self) -> None:
        for sid in list(self._followers):
            await self.end(sid, cancel=False)
        if self._connect_task is not None:
            self._connect_task.cancel()
        if self.bus is not None:
            await self.bus.close()
