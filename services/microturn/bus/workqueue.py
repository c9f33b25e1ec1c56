"""A durable pull consumer used as a work queue: instances of a service share one consumer, so each
message is worked on by one of them at a time.

Per message: a heartbeat (``+WPI``) keeps it from being redelivered while work goes on, so
``ack_wait`` can stay short and a crashed instance's work moves on quickly; the ack goes out only
after the work is done. A failing attempt is nak'ed with a growing delay; the last allowed attempt,
a :class:`PermanentError`, or a delivery past the limit (an instance crashed on it every time) sends
the message to the dead-letter subject instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.client import JetStreamContext

from microturn.bus import rejects
from microturn.bus.connection import Bus
from microturn.bus.errors import Defer, PermanentError, PublishError, Rejected
from microturn.bus.rejects import Rejections
from microturn.bus.streams import Durable, attempts, ensure_consumer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Attempt:
    """Which delivery of a message this is; ``max_attempts`` None means unbounded."""

    number: int
    max_attempts: int | None

    @property
    def is_last(self) -> bool:
        return self.max_attempts is not None and self.number >= self.max_attempts


Handler = Callable[[Msg, Attempt], Awaitable[None]]
DeadHook = Callable[[Msg, str], Awaitable[None]]


class WorkQueue:
    """Run ``handler`` for every message on a durable consumer, at most ``concurrency`` at a time.

    ``consumer``: which durable consumer (``streams.SERVICE_CONSUMERS``); its ``max_attempts`` is the
    deliveries before dead-lettering. It is created here when ``bus.manage_topology`` is on; otherwise
    it must exist (``microturn bus setup``). ``on_dead`` runs before a message is
    dead-lettered, e.g. to tell the session its delegation was given up. Every dead letter is counted
    in ``rejections`` (default: the counter of ``kind``) under a code saying why.
    """

    def __init__(
        self,
        bus: Bus,
        *,
        consumer: Durable,
        kind: str,
        handler: Handler,
        concurrency: int,
        on_dead: DeadHook | None = None,
        rejections: Rejections | None = None,
    ) -> None:
        self.bus = bus
        self.consumer = consumer
        self.stream = consumer.stream
        self.durable = consumer.name
        self.kind = kind
        self.handler = handler
        self.concurrency = concurrency
        self.max_attempts = attempts(consumer, bus.settings)
        self.on_dead = on_dead
        self.rejections = rejections or Rejections.for_kind(kind, bus.settings)
        self._sub: JetStreamContext.PullSubscription | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def start(self) -> None:
        async def subscribe() -> JetStreamContext.PullSubscription:
            if self.bus.settings.manage_topology:
                await ensure_consumer(self.bus.js, self.consumer, self.bus.settings)
            return await self.bus.js.pull_subscribe_bind(self.durable, stream=self.stream)

        self._sub = await self.bus.retrying(subscribe, f"create consumer {self.stream}/{self.durable}")
        self._loop_task = asyncio.create_task(self._fetch_loop(), name=f"workqueue-{self.durable}")

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop taking work, let in-flight work finish for ``grace_s``, then nak what is left."""
        self._stopping.set()
        if self._loop_task:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        grace = self.bus.settings.shutdown_grace_s if grace_s is None else grace_s
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    async def _fetch_loop(self) -> None:
        assert self._sub is not None
        while not self._stopping.is_set():
            if len(self._tasks) >= self.concurrency:
                await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
                continue
            try:
                msgs = await self._sub.fetch(batch=1, timeout=1.0)
            except (TimeoutError, NatsTimeoutError):
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # disconnected: the client reconnects, we poll again
                log.debug("fetch from %s failed: %s", self.durable, exc)
                await asyncio.sleep(0.2)
                continue
            for msg in msgs:
                task = asyncio.create_task(self._process(msg))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _process(self, msg: Msg) -> None:
        attempt = Attempt(msg.metadata.num_delivered, self.max_attempts)
        if self.max_attempts is not None and attempt.number > self.max_attempts:
            await self._dead(
                msg,
                f"gave up: delivered {attempt.number} times without an ack (worker crashes?)",
                rejects.CRASH_LOOP,
            )
            return
        heartbeat = asyncio.create_task(self._keep_alive(msg))
        try:
            await self.handler(msg, attempt)
        except asyncio.CancelledError:
            # Shutting down: hand the message back now rather than after ack_wait.
            with contextlib.suppress(Exception):
                await msg.nak()
            raise
        except Defer as d:
            await self._settle(msg.nak(delay=self._delay(d.delay_s)))
        except Rejected as exc:
            await self._dead(msg, f"rejected: {exc}", exc.code)
        except PermanentError as exc:
            await self._dead(msg, f"permanent error: {exc}", rejects.PERMANENT)
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            if attempt.is_last:
                await self._dead(msg, f"failed {attempt.number} times, last: {reason}", rejects.GAVE_UP)
            else:
                self.rejections.warn(
                    "retry",
                    "attempt %d on %s failed, retrying: %s",
                    attempt.number,
                    msg.subject,
                    reason[:300],
                )
                delay = self.bus.settings.retry_delay_s * attempt.number
                await self._settle(msg.nak(delay=self._delay(delay)))
        else:
            await self._ack(msg)
        finally:
            heartbeat.cancel()

    def _delay(self, delay_s: float) -> float:
        """A nak delay the server can take: positive and at most ``bus.max_defer_s``. (A delay past
        int64 nanoseconds is not understood, and the message would come straight back, for ever.)"""
        if not delay_s > 0:  # also NaN
            return 0.001
        return min(delay_s, self.bus.settings.max_defer_s)

    async def _keep_alive(self, msg: Msg) -> None:
        period = max(self.bus.settings.ack_wait_s / 3, 0.05)
        while True:
            await asyncio.sleep(period)
            with contextlib.suppress(Exception):
                await msg.in_progress()

    async def _ack(self, msg: Msg) -> None:
        await self._settle(self.bus.retrying(lambda: msg.ack_sync(timeout=2.0), "ack"))

    async def _settle(self, op: Awaitable[object]) -> None:
        # If this fails the message is redelivered after ack_wait; de-duplication keeps the outcome single.
        try:
            await op
        except Exception as exc:
            log.warning("could not settle a message on %s: %s", self.durable, exc)

    async def _dead(self, msg: Msg, reason: str, code: str) -> None:
        """Dead-letter, then count (once the message is settled, so a retried copy is not counted twice)."""
        where = f" on {msg.subject} #{msg.metadata.sequence.stream}"
        if self.on_dead is not None:
            try:
                await self.on_dead(msg, reason)
            except Exception as exc:
                self.rejections.warn("hook", "dead-letter hook failed: %s: %s", type(exc).__name__, exc)
        try:
            await self.bus.dead_letter(self.kind, msg, reason)
        except PublishError as exc:  # NATS away: the message comes back and is dead-lettered then
            log.warning("could not dead-letter %s (%s); leaving it for redelivery", msg.subject, exc)
            return
        except Exception as exc:  # the copy itself was refused: retrying cannot help, drop it
            log.error(
                "could not dead-letter %s (%s: %s); terminating it", msg.subject, type(exc).__name__, exc
            )
            await self._settle(msg.term())
            self.rejections.record(code, reason, where)
            return
        await self._ack(msg)
        self.rejections.record(code, reason, where)
