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
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from microturn.bus import rejects, subjects
from microturn.bus.connection import Bus, trace_headers
from microturn.bus.errors import Rejected
from microturn.bus.rejects import Rejections
from microturn.v1 import delegation_pb2, media_pb2

log = logging.getLogger(__name__)
CancelReason = delegation_pb2.CancelReason

# What a UI card may carry: the ui_card tool's limits (it imports them from here). A card over them
# did not come from the tool, and is cut to them before it goes to the client.
CARD_TITLE_CHARS = 120
CARD_BODY_CHARS = 2000
CARD_FIELDS = 12
CARD_FIELD_NAME_CHARS = 40
CARD_FIELD_VALUE_CHARS = 200
CARD_ID_CHARS = 64


def cut_utf8(text: str, max_bytes: int) -> str:
    """``text`` in at most ``max_bytes`` UTF-8 bytes, cut on a character boundary, with an ellipsis."""
    data = text.encode()
    if len(data) <= max_bytes:
        return text
    return data[: max(max_bytes - 3, 0)].decode("utf-8", "ignore") + "…"


def _cut(text: str, max_chars: int, max_bytes: int) -> str:
    return cut_utf8(text if len(text) <= max_chars else text[: max_chars - 1] + "…", max_bytes)


def check_update(update: delegation_pb2.BackgroundUpdate, session_id: str, max_text_bytes: int) -> bool:
    """Refuse (``Rejected``) an update a session reader cannot use, and cut what is over its limits
    in place; True when something was cut.

    Unusable: a delegation id that is not a bus id (it travels on to the client and its replay
    window), an update naming another session than the subject it came on, or no content. Texts
    are cut to ``max_text_bytes`` (the model's text-in is bounded; one oversized text would fail
    the whole tick), cards to the ui_card tool's limits.
    """
    try:
        subjects.check_id("delegation id", update.delegation_id)
    except subjects.InvalidIdError as exc:
        raise Rejected(rejects.INVALID_ID, str(exc)) from None
    if update.session_id != session_id:
        raise Rejected(
            rejects.INVALID_FIELD,
            f"update names session {update.session_id[:64]!r} but came on the subject of {session_id!r}",
        )
    kind = update.WhichOneof("kind")
    if kind is None:
        raise Rejected(rejects.NO_KIND, "the update carries no partial, final, card or error")
    before = update.ByteSize()
    if kind in ("partial", "final"):
        part = getattr(update, kind)
        part.text = cut_utf8(part.text, max_text_bytes)
    elif kind == "error":
        update.error.message = cut_utf8(update.error.message, max_text_bytes)
    else:
        _cut_card(update.ui_card, max_text_bytes)
    return update.ByteSize() != before


def _cut_card(card: media_pb2.UiCard, max_text_bytes: int) -> None:
    card.card_id = card.card_id[:CARD_ID_CHARS]
    card.title = _cut(card.title, CARD_TITLE_CHARS, max_text_bytes)
    card.body = _cut(card.body, CARD_BODY_CHARS, max_text_bytes)
    fields = list(card.fields.items())
    if len(fields) > CARD_FIELDS or any(
        len(k) > CARD_FIELD_NAME_CHARS or len(v) > CARD_FIELD_VALUE_CHARS for k, v in fields
    ):
        card.ClearField("fields")
        for k, v in fields[:CARD_FIELDS]:
            card.fields[k[:CARD_FIELD_NAME_CHARS]] = _cut(v, CARD_FIELD_VALUE_CHARS, max_text_bytes)


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
        self.rejections = Rejections.for_kind("update", bus.settings)

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
                stream_seq = msg.metadata.sequence.stream
                held = self._held.get(stream_seq)
                if held is not None:
                    held.msg = msg
                    continue
                update = delegation_pb2.BackgroundUpdate()
                try:
                    update.ParseFromString(msg.data)
                    cut = check_update(update, self.session_id, self.bus.settings.max_update_text_bytes)
                except Rejected as exc:
                    await self._refuse(msg, exc.code, str(exc))
                    continue
                except Exception as exc:  # nothing a reader can do with it
                    await self._refuse(msg, rejects.UNDECODABLE, f"not a BackgroundUpdate: {exc}")
                    continue
                if cut:
                    self.rejections.record(
                        rejects.TRUNCATED, f"update {update.delegation_id}:{update.seq} cut to its limits"
                    )
                key = (update.delegation_id, update.seq)
                if key in self._seen:  # published twice (a re-run past the de-duplication window)
                    await _settle(msg.ack(), "ack a duplicate update")
                    continue
                self._seen.add(key)
                delivery = UpdateDelivery(update, msg, self._acked)
                self._held[stream_seq] = delivery
                return delivery

    async def _refuse(self, msg: Msg, code: str, reason: str) -> None:
        """Count and terminate an update no reader can use: it is not redelivered."""
        self.rejections.record(code, reason, f" on {msg.subject} #{msg.metadata.sequence.stream}")
        await _settle(msg.term(), "terminate a refused update")

    async def drop(self, delivery: UpdateDelivery) -> None:
        """Give up on an update already handed out (its taker failed on it): terminated, so it is
        neither redelivered nor held."""
        self._held.pop(delivery.msg.metadata.sequence.stream, None)
        await _settle(delivery.msg.term(), "terminate a dropped update")

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


async def _settle(op: Awaitable[object], what: str) -> None:
    """Acks and terms are best effort: if one is lost the server redelivers, and the reader copes."""
    try:
        await op
    except Exception as exc:
        log.debug("could not %s: %s", what, exc)


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
