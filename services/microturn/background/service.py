"""The background service: delegations from the MT_DELEGATIONS work queue, run by a backend,
answered as a stream of updates on the session's subject.

A delegation ends with exactly one final or error update. It is cancelled when a cancellation for
it (or its whole session) arrives, whether before it starts (looked up in MT_CANCELS) or while it
runs (live subscription), and it fails with DEADLINE_EXCEEDED at its deadline. Backend failures
that may pass (endpoint down) are retried through the work queue; the last attempt reports the error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from opentelemetry import metrics, trace

from microturn.background.backend import Backend, DelegationContext, DelegationFailed, Tools
from microturn.background.openai_backend import OpenAIBackend
from microturn.background.planner import PlannerBackend
from microturn.background.updates import ErrorCode, UpdateStream
from microturn.bus import (
    Attempt,
    Bus,
    PermanentError,
    Rejected,
    Rejections,
    RetryableError,
    WorkQueue,
    durable,
    rejects,
    subjects,
    trace_context,
)
from microturn.config import Settings
from microturn.telemetry import log_context, session_attributes
from microturn.tools import clock
from microturn.tools.catalog import build_registry
from microturn.tools.client import ToolClient
from microturn.v1 import delegation_pb2

log = logging.getLogger(__name__)
tracer = trace.get_tracer("microturn.background")
meter = metrics.get_meter("microturn.background")
DELEGATIONS = meter.create_counter(
    "microturn_delegations", unit="{delegation}", description="delegations ended, by outcome and backend"
)
DELEGATION_MS = meter.create_histogram(
    "microturn_delegation_duration", unit="ms", description="from pick-up to the last update, by outcome"
)
CancelReason = delegation_pb2.CancelReason
MAX_TAG_CHARS = 64  # a time zone or language tag longer than this is not one


def make_backend(settings: Settings) -> Backend:
    # The registry here is only the catalog (names, schemas, descriptions); the tools run elsewhere.
    if settings.background.backend == "openai":
        return OpenAIBackend(settings.background, build_registry(settings.tools))
    return PlannerBackend()


@dataclass
class _Running:
    session_id: str
    task: asyncio.Task[None]
    cancel_reason: int | None = None


class BackgroundService:
    name = "background"

    def __init__(self, settings: Settings, backend: Backend | None = None) -> None:
        self.settings = settings
        self.backend = backend or make_backend(settings)
        self.registry = build_registry(settings.tools)
        self.bus: Bus | None = None
        self.queue: WorkQueue | None = None
        self.tools: ToolClient | None = None
        self._cancels: Subscription | None = None
        self._running: dict[str, _Running] = {}
        self._notified: set[str] = set()  # ended with an error update, then dead-lettered
        self.rejections = Rejections.for_kind("delegation", settings.bus)
        self.cancel_rejections = Rejections.for_kind("cancel", settings.bus)

    async def start(self) -> None:
        s = self.settings
        clock.warm_up()  # the planner resolves city names
        self.bus = await Bus.connect(s.nats, s.bus, name="microturn-background")
        self.tools = ToolClient(self.bus, s.background.tool_timeout_s)
        self._cancels = await self.bus.nc.subscribe(f"{subjects.PREFIX}.cancel.>", cb=self._on_cancel)
        self.queue = WorkQueue(
            self.bus,
            consumer=durable(subjects.BACKGROUND_CONSUMER),
            kind="delegation",
            handler=self.handle,
            concurrency=s.background.concurrency,
            on_dead=self._on_dead,
        )
        await self.queue.start()

    async def stop(self) -> None:
        if self.queue is not None:
            await self.queue.stop()
        if self._cancels is not None:
            with contextlib.suppress(Exception):
                await self._cancels.unsubscribe()
        await self.backend.close()
        if self.bus is not None:
            await self.bus.close()

    # -- cancellation ----------------------------------------------------------------------------
    async def _on_cancel(self, msg: Msg) -> None:
        cancel = delegation_pb2.CancelDelegation()
        try:
            cancel.ParseFromString(msg.data)
        except Exception as exc:
            self.cancel_rejections.record(
                rejects.UNDECODABLE, f"not a CancelDelegation: {exc}", f" on {msg.subject}"
            )
            return
        for delegation_id, run in list(self._running.items()):
            if delegation_id == cancel.delegation_id or (
                not cancel.delegation_id and run.session_id == cancel.session_id
            ):
                run.cancel_reason = cancel.reason or CancelReason.CANCEL_REASON_USER_CANCELLED
                run.task.cancel()

    async def _cancelled_before(self, req: delegation_pb2.DelegationRequest) -> int | None:
        assert self.bus is not None
        for subject in (
            subjects.cancel_subject(req.session_id, req.delegation_id),
            subjects.cancel_subject(req.session_id),
        ):
            stored = await self.bus.last_message(subjects.CANCELS_STREAM, subject)
            if stored is not None:
                cancel = delegation_pb2.CancelDelegation()
                try:
                    cancel.ParseFromString(stored.data)
                except Exception as exc:
                    # Its subject still says what is cancelled; only the reason is lost.
                    self.cancel_rejections.record(
                        rejects.UNDECODABLE,
                        f"stored cancellation is not a CancelDelegation: {exc}",
                        f" on {subject}",
                    )
                return cancel.reason or CancelReason.CANCEL_REASON_USER_CANCELLED
        return None

    # -- work ------------------------------------------------------------------------------------
    def _decode(self, msg: Msg) -> delegation_pb2.DelegationRequest:
        req = delegation_pb2.DelegationRequest()
        try:
            req.ParseFromString(msg.data)
        except Exception as exc:
            raise Rejected(rejects.UNDECODABLE, f"not a usable DelegationRequest: {exc}") from None
        try:
            subjects.check_id("delegation id", req.delegation_id)
            subjects.check_id("session id", req.session_id)
        except subjects.InvalidIdError as exc:
            raise Rejected(rejects.INVALID_ID, f"not a usable DelegationRequest: {exc}") from None
        return req

    def _refusal(self, req: delegation_pb2.DelegationRequest) -> tuple[str, str] | None:
        """Why a request with usable ids cannot be worked on, as (code, what the session is told)."""
        limit = self.settings.background.max_request_chars
        if len(req.context.request) > limit:
            return (
                rejects.TOO_LARGE,
                f"The request is {len(req.context.request)} characters long; the limit is {limit}.",
            )
        for name, value in (("time zone", req.context.timezone), ("language", req.context.language)):
            if len(value) > MAX_TAG_CHARS:
                return rejects.INVALID_FIELD, f"The {name} is {len(value)} characters, not a {name}."
        return None

    def _deadline_unix_ms(self, req: delegation_pb2.DelegationRequest) -> int:
        s = self.settings.background
        now_ms = int(time.time() * 1000)
        requested = req.deadline_unix_ms or now_ms + int(s.default_deadline_s * 1000)
        return min(requested, now_ms + int(s.max_deadline_s * 1000))

    async def handle(self, msg: Msg, attempt: Attempt) -> None:
        assert self.bus is not None
        req = self._decode(msg)
        log.info("delegation %s started (attempt %d)", req.delegation_id, attempt.number)
        started = time.perf_counter()
        updates = UpdateStream(self.bus, req)
        try:
            await self._handle(req, msg, attempt, updates)
        finally:
            if updates.finished:
                outcome = updates.outcome
                DELEGATIONS.add(1, {"outcome": outcome, "backend": self.backend.name})
                DELEGATION_MS.record((time.perf_counter() - started) * 1000, {"outcome": outcome})

    async def _handle(
        self, req: delegation_pb2.DelegationRequest, msg: Msg, attempt: Attempt, updates: UpdateStream
    ) -> None:
        with (
            tracer.start_as_current_span(
                "delegation",
                context=trace_context(msg),
                attributes={
                    **session_attributes(req.session_id, req.chunk_index),
                    "delegation.id": req.delegation_id,
                    "background.backend": self.backend.name,
                    "messaging.delivery_count": attempt.number,
                },
            ) as span,
            log_context(
                session_id=req.session_id, chunk_index=req.chunk_index, delegation_id=req.delegation_id
            ),
        ):
            refusal = self._refusal(req)
            if refusal is not None:
                code, text = refusal
                self.rejections.record(code, text, f" for delegation {req.delegation_id}")
                await updates.error(ErrorCode.DELEGATION_ERROR_CODE_UNSUPPORTED, text)
                return
            reason = await self._cancelled_before(req)
            if reason is not None:
                await updates.error(ErrorCode.DELEGATION_ERROR_CODE_CANCELLED, _cancel_text(reason))
                return
            deadline_ms = self._deadline_unix_ms(req)
            assert self.tools is not None
            tools = Tools(self.tools, self.registry, req, deadline_ms)
            ctx = DelegationContext(req, updates, tools, self.settings.background)
            try:
                await self._run(ctx, deadline_ms)
            except DelegationFailed as exc:
                if exc.retryable and not attempt.is_last:
                    raise RetryableError(exc.message) from None
                span.set_attribute("delegation.error", ErrorCode.Name(exc.code))
                if not updates.finished:
                    await updates.error(exc.code, exc.message)
                if exc.retryable:
                    # Failed on every attempt: the session has its error; keep the request for inspection.
                    self._notified.add(req.delegation_id)
                    raise PermanentError(f"failed {attempt.number} times: {exc.message}") from None
            log.info(
                "delegation %s finished after %d updates, tools %s",
                req.delegation_id,
                updates.seq,
                tools.calls,
            )
            span.set_attribute("delegation.tool_calls", len(tools.calls))
            span.set_attribute("delegation.updates", updates.seq)

    async def _run(self, ctx: DelegationContext, deadline_ms: int) -> None:
        did = ctx.request.delegation_id
        task = asyncio.create_task(self.backend.run(ctx))
        running = _Running(ctx.request.session_id, task)
        self._running[did] = running
        try:
            async with asyncio.timeout(max(deadline_ms / 1000 - time.time(), 0)):
                await task
        except TimeoutError:
            raise DelegationFailed(
                ErrorCode.DELEGATION_ERROR_CODE_DEADLINE_EXCEEDED, "The request ran past its deadline."
            ) from None
        except asyncio.CancelledError:
            if running.cancel_reason is None:
                raise  # shutting down: the work queue hands the message back
            raise DelegationFailed(
                ErrorCode.DELEGATION_ERROR_CODE_CANCELLED, _cancel_text(running.cancel_reason)
            ) from None
        except DelegationFailed:
            raise
        except Exception as exc:
            log.exception("backend %s failed", self.backend.name)
            raise DelegationFailed(
                ErrorCode.DELEGATION_ERROR_CODE_INTERNAL,
                f"internal error: {type(exc).__name__}",
                retryable=True,
            ) from None
        finally:
            self._running.pop(did, None)
            if not task.done():
                task.cancel()
        if not ctx.updates.finished:
            raise DelegationFailed(
                ErrorCode.DELEGATION_ERROR_CODE_INTERNAL, "the backend ended without an answer"
            )

    async def _on_dead(self, msg: Msg, reason: str) -> None:
        """A delegation given up on still owes its session an ending."""
        assert self.bus is not None
        req = delegation_pb2.DelegationRequest()
        try:
            req.ParseFromString(msg.data)
            subjects.check_id("session id", req.session_id)
            subjects.check_id("delegation id", req.delegation_id)
        except Exception:
            return
        if req.delegation_id in self._notified:
            self._notified.discard(req.delegation_id)
            return
        update = delegation_pb2.BackgroundUpdate(
            delegation_id=req.delegation_id,
            session_id=req.session_id,
            seq=1_000_000,  # after anything a crashed attempt may have sent
            error=delegation_pb2.DelegationError(
                code=ErrorCode.DELEGATION_ERROR_CODE_INTERNAL,
                message=f"The background service gave up: {reason}",
            ),
            sent_unix_us=time.time_ns() // 1000,
        )
        await self.bus.publish(
            subjects.update_subject(req.session_id), update, msg_id=f"{req.delegation_id}:dead"
        )


def _cancel_text(reason: int) -> str:
    return {
        CancelReason.CANCEL_REASON_SESSION_CLOSED: "Cancelled: the session closed.",
        CancelReason.CANCEL_REASON_SUPERSEDED: "Cancelled: a newer request replaced it.",
    }.get(reason, "Cancelled by the user.")
