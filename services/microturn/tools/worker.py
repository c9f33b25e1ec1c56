"""The tool service's bus side: tool calls from the MT_TOOL_CALLS work queue, and due timers.

Both are trust boundaries. A tool call that does not decode or whose call id cannot name a result
subject is dead-lettered (nobody could be answered); anything else about a call is the executor's
business and answered with a typed error. A stored timer is checked whole before it is waited on
or fired (ids, a whole duration within ``tools.max_timer_s``, a due time no later than that from
now, a label of text): the timers queue redelivers without bound by design, so a timer that
could fail when due would fail for ever.
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any

from nats.aio.msg import Msg
from opentelemetry import trace

from microturn.bus import Attempt, Bus, Defer, Rejected, WorkQueue, durable, rejects, subjects, trace_context
from microturn.telemetry import log_context, session_attributes
from microturn.tools.executor import ToolExecutor
from microturn.tools.metrics import TIMERS_FIRED, record_call
from microturn.tools.timers import MAX_LABEL_CHARS, due_text, timer_update_id
from microturn.v1 import delegation_pb2, tools_pb2

log = logging.getLogger(__name__)
tracer = trace.get_tracer("microturn.tools")


class ToolWorker:
    def __init__(self, bus: Bus, executor: ToolExecutor, concurrency: int, max_timer_s: int = 86_400) -> None:
        self.bus = bus
        self.executor = executor
        self.max_timer_s = max_timer_s
        self.calls = WorkQueue(
            bus,
            consumer=durable(subjects.TOOLS_CONSUMER),
            kind="tool",
            handler=self.handle_call,
            concurrency=concurrency,
        )
        self.timers = WorkQueue(
            bus,
            consumer=durable(
                subjects.TIMERS_CONSUMER
            ),  # unbounded attempts: a waiting timer is redelivered by design
            kind="timer",
            handler=self.handle_timer,
            concurrency=concurrency,
        )

    async def start(self) -> None:
        await self.calls.start()
        await self.timers.start()

    async def stop(self, grace_s: float | None = None) -> None:
        await self.calls.stop(grace_s)
        await self.timers.stop(grace_s)

    async def handle_call(self, msg: Msg, attempt: Attempt) -> None:
        call = tools_pb2.ToolCall()
        try:
            call.ParseFromString(msg.data)
        except Exception as exc:
            raise Rejected(rejects.UNDECODABLE, f"not a usable ToolCall: {exc}") from None
        try:
            result_subject = subjects.tool_result_subject(call.call_id)
        except subjects.InvalidIdError as exc:
            raise Rejected(rejects.INVALID_ID, f"not a usable ToolCall: {exc}") from None
        # Ids go on every span and log line of the call: only ones that are ids (the executor
        # refuses the others).
        session_id = call.session_id if subjects.is_id(call.session_id) else ""
        delegation_id = call.delegation_id if subjects.is_id(call.delegation_id) else ""
        with (
            tracer.start_as_current_span(
                f"tool {call.tool[:40]}",
                context=trace_context(msg),
                attributes={
                    **session_attributes(session_id),
                    "delegation.id": delegation_id,
                    "tool.call_id": call.call_id,
                    "tool.name": call.tool[:64],
                    "messaging.delivery_count": attempt.number,
                },
            ) as span,
            log_context(session_id=session_id or None, delegation_id=delegation_id, call_id=call.call_id),
        ):
            log.info("tool call %s started: %s (attempt %d)", call.call_id, call.tool[:64], attempt.number)
            result = await self.executor.execute(call)
            if result.WhichOneof("outcome") == "error":
                span.set_attribute("tool.error", tools_pb2.ToolErrorCode.Name(result.error.code))
                log.info("tool call %s failed: %s", call.call_id, result.error.message)
            else:
                log.info("tool call %s done in %d us", call.call_id, result.duration_us)
            record_call(self.executor, call, result, "nats")
            await self.bus.publish(result_subject, result, msg_id=call.call_id)

    def read_timer(self, data: bytes) -> dict[str, Any]:
        """The timer a message holds, with whole-number ``seconds`` and ``fires_unix_ms``; Rejected
        when it is not a timer this service could have set."""
        try:
            timer = json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise Rejected(rejects.UNDECODABLE, f"not timer JSON: {exc}") from None
        if not isinstance(timer, dict):
            raise Rejected(rejects.UNDECODABLE, f"a timer is a JSON object, got {type(timer).__name__}")
        for key in ("session_id", "timer_id"):
            if not subjects.is_id(timer.get(key)):
                raise Rejected(rejects.INVALID_ID, f"timer {key} is not a usable id")
        seconds = _whole(timer.get("seconds"))
        if seconds is None or not 1 <= seconds <= self.max_timer_s:
            raise Rejected(rejects.INVALID_FIELD, f"timer seconds must be a whole 1..{self.max_timer_s}")
        due_ms = _whole(timer.get("fires_unix_ms"))
        latest_ms = int(time.time() * 1000) + self.max_timer_s * 1000
        if due_ms is None or not 0 <= due_ms <= latest_ms:
            raise Rejected(
                rejects.INVALID_FIELD,
                f"timer fires_unix_ms must be a time at most {self.max_timer_s}s from now",
            )
        label = timer.get("label", "")
        if not isinstance(label, str) or len(label) > MAX_LABEL_CHARS or not _encodable(label):
            raise Rejected(
                rejects.INVALID_FIELD, f"timer label must be text of at most {MAX_LABEL_CHARS} characters"
            )
        timer.update(seconds=seconds, fires_unix_ms=due_ms)
        return timer

    async def handle_timer(self, msg: Msg, attempt: Attempt) -> None:
        timer = self.read_timer(msg.data)
        session_id, due_ms = timer["session_id"], timer["fires_unix_ms"]
        update_id = timer_update_id(timer["timer_id"])
        left_s = due_ms / 1000 - time.time()
        if left_s > 0:
            raise Defer(left_s)
        if await self.bus.last_message(subjects.CANCELS_STREAM, subjects.cancel_subject(session_id)):
            log.info("timer %s dropped: session %s was closed", update_id, session_id)
            return
        with tracer.start_as_current_span(
            "timer fired", context=trace_context(msg), attributes=session_attributes(session_id)
        ):
            update = delegation_pb2.BackgroundUpdate(
                delegation_id=update_id,
                session_id=session_id,
                seq=1,
                final=delegation_pb2.FinalResult(text=due_text(timer)),
                sent_unix_us=time.time_ns() // 1000,
            )
            await self.bus.publish(subjects.update_subject(session_id), update, msg_id=f"{update_id}:1")
            TIMERS_FIRED.add(1)


def _whole(value: object) -> int | None:
    """A JSON whole number (``5`` or ``5.0``) as an int, else None (bools, NaN, text are not)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:  # an unpaired surrogate from a JSON escape
        return False
    return True
