"""The interaction service's side of the bus: publish delegations, cancel them, and follow the
background updates of one session with redelivery.

Updates for a session are read through a durable consumer named after the session, so a replica
that restarts (or a new replica that takes the session over) resumes where the last ack left off;
the consumer is deleted when the session ends, or by the server after it has been idle for
``bus.session_consumer_inactive_s``. Duplicates (a delegation re-run after a crash republishes the
same ``(delegation_id, seq)``) are dropped here, so each update is handed out once per reader.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from microturn.bus import subjects
from microturn.bus.connection import Bus, trace_headers
from microturn.v1 import delegation_pb2

CancelReason = delegation_pb2.CancelReason


@dataclass
class UpdateDelivery:
    """One background update; ``ack()`` once it has been fed to the model, or it is redelivered."""

    update: delegation_pb2.BackgroundUpdate
    msg: Msg = field(repr=False)
    _on_ack: Callable[[UpdateDelivery], None] | None = field(default=None, repr=False)

    @property
    def is_last(self) -> bool:
        """A final result or an error ends its delegation."""
        return self.update.WhichOneof("kind") in ("final", "error")

    async def ack(self) -> None:
        await self.msg.ack()
        if self._on_ack is not None:
            self._on_ack(self)


class SessionUpdates:
    """Async iterator over one session's updates (use :meth:`DelegationClient.session_updates`)."""

    def __init__(self, bus: Bus, session_id: str) -> None:
        self.bus = bus
        self.session_id = subjects.check_id("session id", session_id)
        self.durable = f"session-{session_id}"
        self._sub: JetStreamContext.PullSubscription | None = None
        self._seen: set[tuple[str, int]] = set()
        # Handed out, not acked yet: a redelivery (ack_wait passed) refreshes the held delivery
        # instead of being handed out twice; its ack then goes to the newest delivery.
        self._held: dict[int, UpdateDelivery] = {}

    async def open(self) -> SessionUpdates:
        s = self.bus.settings
        config = ConsumerConfig(
            durable_name=self.durable,
            filter_subject=subjects.update_subject(self.session_id),
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=s.ack_wait_s,
            max_deliver=-1,
            inactive_threshold=s.session_consumer_inactive_s,
        )

        async def subscribe() -> JetStreamContext.PullSubscription:
            await self.bus.js.add_consumer(subjects.UPDATES_STREAM, config)
            return await self.bus.js.pull_subscribe_bind(self.durable, stream=subjects.UPDATES_STREAM)

        self._sub = await self.bus.retrying(subscribe, f"follow updates of {self.session_id}")
        return self

    def __aiter__(self) -> AsyncIterator[UpdateDelivery]:
        return self

    async def __anext__(self) -> UpdateDelivery:
        while True:
            delivery = await self.next(timeout_s=None)
            if delivery is not None:
                return delivery

    async def next(self, timeout_s: float | None = 1.0) -> UpdateDelivery | None:
        """The next new update, or None after ``timeout_s`` (None: wait for ever)."""
        if self._sub is None:
            raise RuntimeError("SessionUpdates.open() first")
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            wait = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
            if wait <= 0:
                return None
            try:
                msgs = await self._sub.fetch(batch=1, timeout=wait)
            except (TimeoutError, NatsTimeoutError):
                continue
            except Exception:  # reconnecting
                await asyncio.sleep(0.1)
                continue
            for msg in msgs:
                update = delegation_pb2.BackgroundUpdate()
                try:
                    update.ParseFromString(msg.data)
                except Exception:
                    await msg.term()  # nothing a reader can do with it
                    continue
                stream_seq = msg.metadata.sequence.stream
                held = self._held.get(stream_seq)
                if held is not None:
                    held.msg = msg
                    continue
                key = (update.delegation_id, update.seq)
                if key in self._seen:  # published twice (a re-run past the de-duplication window)
                    await msg.ack()
                    continue
                self._seen.add(key)
                delivery = UpdateDelivery(update, msg, self._acked)
                self._held[stream_seq] = delivery
                return delivery

    def _acked(self, delivery: UpdateDelivery) -> None:
        self._held.pop(delivery.msg.metadata.sequence.stream, None)

    async def close(self, delete: bool = True) -> None:
        """Stop reading; ``delete`` (session over) also removes the durable consumer."""
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        if delete:
            with contextlib.suppress(NotFoundError, Exception):
                await self.bus.js.delete_consumer(subjects.UPDATES_STREAM, self.durable)


class DelegationClient:
    """Publish delegations and cancellations; follow a session's updates."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    async def delegate(self, request: delegation_pb2.DelegationRequest) -> bool:
        """Queue a delegation; returns False if the same ``delegation_id`` was already queued."""
        subjects.check_id("delegation id", request.delegation_id)
        subjects.check_id("session id", request.session_id)
        if not request.sent_unix_us:
            request.sent_unix_us = time.time_ns() // 1000
        ack = await self.bus.publish(
            subjects.DELEGATION_REQUEST, request, msg_id=request.delegation_id, headers=trace_headers()
        )
        return not ack.duplicate

    async def cancel(
        self,
        session_id: str,
        delegation_id: str | None = None,
        reason: int = CancelReason.CANCEL_REASON_USER_CANCELLED,
    ) -> None:
        """Cancel one delegation, or (no ``delegation_id``) everything of a session, e.g. when it closes.

        The cancellation is kept in a stream, so a delegation not started yet (or redelivered later)
        sees it too.
        """
        cancel = delegation_pb2.CancelDelegation(
            delegation_id=delegation_id or "", session_id=session_id, reason=reason
        )
        await self.bus.publish(
            subjects.cancel_subject(session_id, delegation_id), cancel, headers=trace_headers()
        )

    async def session_updates(self, session_id: str) -> SessionUpdates:
        return await SessionUpdates(self.bus, session_id).open()
