"""The tool service's bus side: tool calls from the MT_TOOL_CALLS work queue, and due timers."""

from __future__ import annotations

import json
import logging
import time

from nats.aio.msg import Msg
from opentelemetry import trace

from microturn.bus import Attempt, Bus, Defer, PermanentError, WorkQueue, subjects, trace_context
from microturn.telemetry import log_context, session_attributes
from microturn.tools.executor import ToolExecutor
from microturn.tools.metrics import TIMERS_FIRED, record_call
from microturn.tools.timers import due_text, timer_update_id
from microturn.v1 import delegation_pb2, tools_pb2

log = logging.getLogger(__name__)
tracer = trace.get_tracer("microturn.tools")


class ToolWorker:
    def __init__(self, bus: Bus, executor: ToolExecutor, concurrency: int) -> None:
        self.bus = bus
        self.executor = executor
        self.calls = WorkQueue(
            bus,
            stream=subjects.TOOL_CALLS_STREAM,
            subject=subjects.TOOL_CALL,
            durable=subjects.TOOLS_CONSUMER,
            kind="tool",
            handler=self.handle_call,
            concurrency=concurrency,
        )
        self.timers = WorkQueue(
            bus,
            stream=subjects.TIMERS_STREAM,
            subject=subjects.TIMERS,
            durable=subjects.TIMERS_CONSUMER,
            kind="timer",
            handler=self.handle_timer,
            concurrency=concurrency,
            max_attempts=None,  # a waiting timer is redelivered many times by design
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
            result_subject = subjects.tool_result_subject(call.call_id)
        except Exception as exc:
            raise PermanentError(f"not a usable ToolCall: {exc}") from exc
        with (
            tracer.start_as_current_span(
                f"tool {call.tool[:40]}",
                context=trace_context(msg),
                attributes={
                    **session_attributes(call.session_id),
                    "delegation.id": call.delegation_id,
                    "tool.call_id": call.call_id,
                    "tool.name": call.tool[:64],
                    "messaging.delivery_count": attempt.number,
                },
            ) as span,
            log_context(
                session_id=call.session_id or None, delegation_id=call.delegation_id, call_id=call.call_id
            ),
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

    async def handle_timer(self, msg: Msg, attempt: Attempt) -> None:
        try:
            timer = json.loads(msg.data)
            session_id = subjects.check_id("session id", timer["session_id"])
            due_ms = int(timer["fires_unix_ms"])
            update_id = timer_update_id(str(timer["timer_id"]))
        except Exception as exc:
            raise PermanentError(f"not a usable timer: {exc}") from exc
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
