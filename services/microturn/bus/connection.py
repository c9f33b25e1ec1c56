"""One NATS connection per process, with the JetStream helpers every service needs.

Publishing retries across a NATS restart (the client reconnects on its own) until the publish
timeout, so a short outage delays work instead of losing it.

Credentials and TLS come from :class:`~microturn.config.NatsSettings`: each service connects as its
own user (``nats.user`` / ``nats.password``; its permissions are in :mod:`microturn.bus.permissions`)
with the inbox prefix ``_INBOX.<user>``, so it may read its own replies only. The server refusing
something is never mistaken for an outage: a wrong password or a TLS failure ends ``connect`` at once
(``ConnectionError``), and a publish the user may not make fails with :class:`PermissionDenied` as
soon as the server says so instead of being retried until the publish timeout. Every permissions
violation is logged as an error (once per subject) and kept in ``Bus.permission_violations``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

from google.protobuf.message import Message
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import AuthorizationError, ConnectionClosedError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import PubAck, RawStreamMsg
from nats.js.errors import NoStreamResponseError, NotFoundError, ServiceUnavailableError
from opentelemetry import context as otel_context
from opentelemetry import propagate

from microturn.bus import subjects
from microturn.bus.errors import PayloadTooLarge, PublishError
from microturn.bus.permissions import inbox_prefix
from microturn.bus.rejects import clean_reason
from microturn.bus.streams import ensure_streams
from microturn.config import BusSettings, ConfigError, NatsSettings

log = logging.getLogger(__name__)

MSG_ID = "Nats-Msg-Id"
DEAD_REASON = "Microturn-Dead-Reason"
DEAD_DELIVERIES = "Microturn-Deliveries"
DEAD_SUBJECT = "Microturn-Original-Subject"
DEAD_STREAM_SEQ = "Microturn-Original-Seq"
DEAD_SIZE = "Microturn-Dead-Size"  # set when the body was cut to fit: the original size in bytes
DEAD_REASON_CHARS = 500

T = TypeVar("T")
_VIOLATION = re.compile(r'permissions violation for (publish|subscription) to "([^"]*)"', re.IGNORECASE)
_MAX_LOGGED_VIOLATIONS = 1000


class PermissionDenied(PublishError):
    """The server refused a publish (or JetStream API request) for this connection's user: its
    permissions (``microturn.bus.permissions``) do not allow the subject. Not retried."""


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


def tls_context(nats_settings: NatsSettings) -> ssl.SSLContext | None:
    """The client TLS context of ``nats_settings`` (None: no TLS): the server is verified against
    ``tls_ca`` (else the system's CAs) and its host name; ``tls_cert``/``tls_key`` for mutual TLS."""
    if not nats_settings.tls:
        return None
    setting = "nats.tls_ca (MICROTURN_NATS__TLS_CA)"
    try:
        ctx = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=str(nats_settings.tls_ca) if nats_settings.tls_ca else None
        )
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if nats_settings.tls_cert is not None and nats_settings.tls_key is not None:
            setting = "nats.tls_cert / nats.tls_key (MICROTURN_NATS__TLS_CERT, MICROTURN_NATS__TLS_KEY)"
            ctx.load_cert_chain(str(nats_settings.tls_cert), str(nats_settings.tls_key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{setting}: cannot load: {exc}") from None
    return ctx


def _fatal_connect_error(exc: BaseException) -> bool:
    """Errors that retrying cannot fix: the server refused the credentials, or TLS failed."""
    return isinstance(exc, AuthorizationError | ssl.SSLError) or "authorization violation" in str(exc).lower()


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

    def __init__(self, nc: Client, settings: BusSettings, user: str | None = None) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream(timeout=5.0)
        self.settings = settings
        self.user = user
        # "publish <subject>" / "subscription <subject>" the server refused, newest last.
        self.permission_violations: deque[str] = deque(maxlen=100)
        self._logged_violations: set[str] = set()
        self._denied_waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._publish_violations = 0
        self._last_publish_violation = ""

    @classmethod
    async def connect(
        cls,
        nats_settings: NatsSettings | str,
        settings: BusSettings | None = None,
        name: str = "microturn",
        connect_timeout_s: float = 30.0,
        create_streams: bool | None = None,
    ) -> Bus:
        """Connect (waiting up to ``connect_timeout_s``: NATS may start after us) and ensure the streams
        (``create_streams``; default ``settings.manage_topology``).

        ``nats_settings``: the ``nats`` settings (URL, user and password, TLS); a plain URL connects
        without credentials or TLS. Raises ``ConnectionError`` when NATS is not reachable in time, or
        at once when it refuses the credentials or the TLS handshake fails."""
        nats_settings = NatsSettings(url=nats_settings) if isinstance(nats_settings, str) else nats_settings
        settings = settings or BusSettings()
        url, user = nats_settings.client_url, nats_settings.user
        who = f" as user {user!r}" if user else ""
        tls = tls_context(nats_settings)
        nc = Client()
        bus = cls(nc, settings, user)
        loop = asyncio.get_running_loop()
        refused: asyncio.Future[BaseException] = loop.create_future()
        connected = False
        reported: list[BaseException] = []  # a refusal while reconnecting is logged once

        async def on_error(exc: Exception) -> None:
            match = _VIOLATION.search(str(exc))
            if match:
                bus._on_violation(match.group(1).lower(), match.group(2))
            elif not connected and _fatal_connect_error(exc):
                if not refused.done():
                    refused.set_result(exc)
            elif _fatal_connect_error(exc):  # reconnecting, e.g. the password was rotated
                if not reported:
                    reported.append(exc)
                    log.error("nats: %s%s: %s (retrying)", url, who, exc)
            else:
                log.debug("nats: %s", exc)

        async def on_disconnect() -> None:
            if nc.is_closed or nc.is_draining:
                return
            log.warning("nats: disconnected, reconnecting")

        async def on_reconnect() -> None:
            reported.clear()
            log.info("nats: reconnected")

        options: dict[str, object] = {}
        if user is not None and nats_settings.password is not None:
            options.update(
                user=user, password=nats_settings.password.get_secret_value(), inbox_prefix=inbox_prefix(user)
            )
        if tls is not None:
            options.update(tls=tls, tls_handshake_first=nats_settings.tls_handshake_first)
        connecting = asyncio.ensure_future(
            nc.connect(
                url,
                name=name,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.2,
                connect_timeout=2,
                error_cb=on_error,
                disconnected_cb=on_disconnect,
                reconnected_cb=on_reconnect,
                **options,
            )
        )
        try:
            done, _ = await asyncio.wait(
                {connecting, refused}, timeout=connect_timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        except BaseException:
            connecting.cancel()
            raise
        if connecting not in done:
            connecting.cancel()
            with contextlib.suppress(BaseException):
                await connecting
            with contextlib.suppress(Exception):
                await nc.close()
            if refused.done():
                exc = refused.result()
                what = "TLS failed" if isinstance(exc, ssl.SSLError) else "refused the credentials"
                raise ConnectionError(f"NATS at {url}{who}: {what}: {exc}") from exc
            raise ConnectionError(f"cannot reach NATS at {url} within {connect_timeout_s:.0f}s")
        try:
            connecting.result()
        except Exception as exc:
            raise ConnectionError(f"cannot connect to NATS at {url}{who}: {exc}") from exc
        connected = True
        server_info = getattr(nc, "_server_info", {}) or {}
        if tls is not None and not nats_settings.tls_handshake_first and not server_info.get("tls_required"):
            await nc.close()
            raise ConnectionError(
                f"NATS at {url} does not require TLS, but nats.tls_* settings ask for it: not using a "
                "plaintext connection (set nats.tls_handshake_first to never send anything in the clear)"
            )
        if settings.manage_topology if create_streams is None else create_streams:
            try:
                await bus.retrying(lambda: ensure_streams(bus.js, settings), "create streams")
            except BaseException:
                with contextlib.suppress(Exception):
                    await nc.close()
                raise
        return bus

    async def close(self) -> None:
        if not self.nc.is_closed:
            await self.nc.drain()

    def _on_violation(self, kind: str, subject: str) -> None:
        """The server refused ``kind`` ("publish" or "subscription") to ``subject`` (nats-py reports
        the subject in lower case)."""
        what = f"{kind} {subject}"
        self.permission_violations.append(what)
        if kind == "publish":
            self._publish_violations += 1
            self._last_publish_violation = f"publish to {subject}"
            for waiter in self._denied_waiters.pop(subject.lower(), []):
                if not waiter.done():
                    waiter.set_result(None)
        if what not in self._logged_violations and len(self._logged_violations) < _MAX_LOGGED_VIOLATIONS:
            self._logged_violations.add(what)
            log.error(
                "NATS refused %s to %s for user %s: not in its permissions (microturn.bus.permissions)",
                kind,
                subject,
                self.user or "(none)",
            )
        else:
            log.debug("NATS refused %s to %s", kind, subject)

    async def unless_denied(self, subject: str, op: Callable[[], Awaitable[T]]) -> T:
        """Run ``op()`` (which publishes to ``subject``, or makes a request on it), failing with
        :class:`PermissionDenied` as soon as the server refuses that publish."""
        key = subject.lower()
        denied: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._denied_waiters.setdefault(key, []).append(denied)
        task = asyncio.ensure_future(op())
        try:
            done, _ = await asyncio.wait({task, denied}, return_when=asyncio.FIRST_COMPLETED)
            if task in done:
                return task.result()
            raise PermissionDenied(
                f"NATS refused user {self.user or '(none)'} to publish to {subject}: not in its permissions"
            )
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
            waiters = self._denied_waiters.get(key)
            if waiters is not None:
                with contextlib.suppress(ValueError):
                    waiters.remove(denied)
                if not waiters:
                    self._denied_waiters.pop(key, None)
            if not denied.done():
                denied.cancel()

    async def retrying(self, op, what: str, timeout_s: float | None = None):
        """Run ``op()`` until it succeeds or ``timeout_s`` passes, riding out NATS reconnects.

        A request the server refused times out like an outage; when the server reported a publish
        permissions violation during the attempt, that is :class:`PermissionDenied` instead."""
        deadline = time.monotonic() + (timeout_s or self.settings.publish_timeout_s)
        delay = 0.05
        while True:
            refused_before = self._publish_violations
            try:
                return await op()
            except _TRANSIENT as exc:
                if self._publish_violations != refused_before:
                    raise PermissionDenied(
                        f"{what}: NATS refused user {self.user or '(none)'} a request it needs: "
                        f"{self._last_publish_violation} (not in its permissions)"
                    ) from exc
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
            lambda: self.unless_denied(
                subject, lambda: self.js.publish(subject, payload, headers=hdrs or None)
            ),
            f"publish {subject}",
        )

    async def last_message(self, stream: str, subject: str) -> RawStreamMsg | None:
        """The newest message on ``subject`` in ``stream``, or None."""

        async def get() -> RawStreamMsg | None:
            try:
                return await self.unless_denied(
                    f"$JS.API.STREAM.MSG.GET.{stream}", lambda: self.js.get_last_msg(stream, subject)
                )
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


__all__ = [
    "Bus",
    "PayloadTooLarge",
    "PermissionDenied",
    "PublishError",
    "header_bytes",
    "tls_context",
    "trace_context",
    "trace_headers",
]
