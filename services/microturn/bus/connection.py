"""One NATS connection per process, with the JetStream helpers every service needs.

Publishing retries across a NATS restart (the client reconnects on its own) until the publish
timeout, so a short outage delays work instead of losing it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping

import nats
from google.protobuf.message import Message
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError, NoServersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import PubAck, RawStreamMsg
from nats.js.errors import NoStreamResponseError, NotFoundError, ServiceUnavailableError
from opentelemetry import context as otel_context
from opentelemetry import propagate

from microturn.bus import subjects
from microturn.bus.errors import PayloadTooLarge, PublishError
from microturn.bus.rejects import clean_reason
from microturn.bus.streams import ensure_streams
from microturn.config import BusSettings

log = logging.getLogger(__name__)

MSG_ID = "Nats-Msg-Id"
DEAD_REASON = "Microturn-Dead-Reason"
DEAD_DELIVERIES = "Microturn-Deliveries"
DEAD_SUBJECT = "Microturn-Original-Subject"
DEAD_STREAM_SEQ = "Microturn-Original-Seq"
DEAD_SIZE = "Microturn-Dead-Size"  # set when the body was cut to fit: the original size in bytes
DEAD_REASON_CHARS = 500

_TRANSIENT = (
    NatsTimeoutError,
    NoStreamResponseError,
    ConnectionClosedError,
    ServiceUnavailableError,
    OSError,
)


def header_bytes(headers: Mapping[str, str]) -> int:
    """Bytes the headers take on the wire (``NATS/1.0`` line, ``key: value`` lines, blank line);
    the server counts them against its payload limit."""
    if not headers:
        return 0
    return 12 + sum(len(k.encode()) + len(str(v).encode(errors="replace")) + 4 for k, v in headers.items())


def trace_headers(headers: Mapping[str, str] | None = None) -> dict[str, str]:
    """Headers carrying the current trace context, so the consumer's spans join the same trace."""
    out = dict(headers or {})
    propagate.inject(out)
    return out


def trace_context(msg: Msg | RawStreamMsg) -> otel_context.Context:
    """The trace context a message was published under (empty when it carries none)."""
    return propagate.extract(dict(msg.headers or {}))


class Bus:
    """A NATS connection plus JetStream, with retrying publishes and dead-lettering."""

    def __init__(self, nc: Client, settings: BusSettings) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream(timeout=5.0)
        self.settings = settings

    @classmethod
    async def connect(
        cls,
        url: str,
        settings: BusSettings | None = None,
        name: str = "microturn",
        connect_timeout_s: float = 30.0,
        create_streams: bool = True,
    ) -> Bus:
        """Connect (retrying until ``connect_timeout_s``: NATS may start after us) and ensure the streams."""
        settings = settings or BusSettings()

        async def on_error(exc: Exception) -> None:
            log.debug("nats: %s", exc)

        client: list[Client] = []

        async def on_disconnect() -> None:
            if client and (client[0].is_closed or client[0].is_draining):
                return
            log.warning("nats: disconnected, reconnecting")

        async def on_reconnect() -> None:
            log.info("nats: reconnected")

        deadline = time.monotonic() + connect_timeout_s
        while True:
            try:
                nc = await nats.connect(
                    url,
                    name=name,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.2,
                    connect_timeout=2,
                    error_cb=on_error,
                    disconnected_cb=on_disconnect,
                    reconnected_cb=on_reconnect,
                )
                client.append(nc)
                break
            except (NoServersError, OSError, NatsTimeoutError) as exc:
                if time.monotonic() > deadline:
                    raise ConnectionError(f"cannot reach NATS at {url}: {exc}") from exc
                await asyncio.sleep(0.3)
        bus = cls(nc, settings)
        if create_streams:
            await bus.retrying(lambda: ensure_streams(bus.js, settings), "create streams")
        return bus

    async def close(self) -> None:
        if not self.nc.is_closed:
            await self.nc.drain()

    async def retrying(self, op, what: str, timeout_s: float | None = None):
        """Run ``op()`` until it succeeds or ``timeout_s`` passes, riding out NATS reconnects."""
        deadline = time.monotonic() + (timeout_s or self.settings.publish_timeout_s)
        delay = 0.05
        while True:
            try:
                return await op()
            except _TRANSIENT as exc:
                if time.monotonic() + delay > deadline:
                    raise PublishError(f"{what}: NATS unavailable ({type(exc).__name__}: {exc})") from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def publish(
        self,
        subject: str,
        message: Message | bytes,
        msg_id: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> PubAck:
        """Publish to JetStream and wait for the stream's ack; ``msg_id`` de-duplicates re-publishes."""
        payload = message if isinstance(message, bytes) else message.SerializeToString()
        hdrs = dict(headers or {})
        if msg_id:
            hdrs[MSG_ID] = msg_id
        size = len(payload) + header_bytes(hdrs)
        if size > self.max_message_bytes:
            raise PayloadTooLarge(
                f"message for {subject} is {size} bytes with its headers, over the limit of "
                f"{self.max_message_bytes} (bus.max_payload_bytes and the server's max_payload)"
            )
        return await self.retrying(
            lambda: self.js.publish(subject, payload, headers=hdrs or None), f"publish {subject}"
        )

    async def last_message(self, stream: str, subject: str) -> RawStreamMsg | None:
        """The newest message on ``subject`` in ``stream``, or None."""

        async def get() -> RawStreamMsg | None:
            try:
                return await self.js.get_last_msg(stream, subject)
            except NotFoundError:
                return None

        return await self.retrying(get, f"read {stream}/{subject}")

    @property
    def max_message_bytes(self) -> int:
        """Largest message (payload plus headers) this connection may send: the server closes a
        connection that sends more, so this is checked before every publish."""
        server = self.nc.max_payload or self.settings.max_payload_bytes
        return min(self.settings.max_payload_bytes, server)

    async def dead_letter(self, kind: str, msg: Msg, reason: str) -> None:
        """Copy a message that will not be retried to ``mt.dead.<kind>``, with why and how often it failed.

        The reason is made header-safe and bounded; a body that would not fit beside the dead-letter
        headers is cut (``Microturn-Dead-Size`` keeps the original size), so even a message at the size
        limit can be dead-lettered."""
        meta = msg.metadata
        seq = meta.sequence.stream
        msg_id = f"dead-{meta.stream}-{seq}"
        headers = {
            DEAD_REASON: clean_reason(reason, DEAD_REASON_CHARS),
            DEAD_DELIVERIES: str(meta.num_delivered),
            DEAD_SUBJECT: msg.subject,
            DEAD_STREAM_SEQ: str(seq),
        }
        data = msg.data or b""
        room = self.max_message_bytes - header_bytes({**headers, DEAD_SIZE: str(len(data)), MSG_ID: msg_id})
        if len(data) > room:
            headers[DEAD_SIZE] = str(len(data))
            data = data[: max(room, 0)]
        await self.publish(subjects.dead_subject(kind), data, msg_id=msg_id, headers=headers)
        # Counted and logged (rate-limited) by the caller; one line per message would let a flood flood the logs.
        log.debug(
            "dead-lettered %s #%s after %d deliveries: %s", msg.subject, seq, meta.num_delivered, reason
        )


__all__ = ["Bus", "PayloadTooLarge", "PublishError", "header_bytes", "trace_context", "trace_headers"]
