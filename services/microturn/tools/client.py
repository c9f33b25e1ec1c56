"""Call a tool over the bus and wait for its result (used by the background service).

The result goes to ``mt.tool.result.<call_id>`` and is also kept in a stream: the caller listens
on the subject before publishing the call, and falls back to the stored copy, so neither a call
de-duplicated by its id (a retried delegation asking again) nor a NATS restart loses the answer.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from typing import Any

from nats.errors import TimeoutError as NatsTimeoutError

from microturn.bus import Bus, Rejections, rejects, subjects, trace_headers
from microturn.v1 import tools_pb2

Code = tools_pb2.ToolErrorCode


def call_id_for(delegation_id: str, step: int, tool: str, arguments_json: str) -> str:
    """Same delegation, step and arguments, same id: a re-run reuses the stored result."""
    digest = hashlib.sha256(f"{delegation_id}\0{step}\0{tool}\0{arguments_json}".encode()).hexdigest()
    return digest[:32]


class ToolClient:
    def __init__(self, bus: Bus, timeout_s: float = 15.0) -> None:
        self.bus = bus
        self.timeout_s = timeout_s
        self.rejections = Rejections.for_kind("tool_result", bus.settings)

    async def call(
        self,
        tool: str,
        arguments: dict[str, Any] | str,
        *,
        schema: str,
        call_id: str,
        session_id: str = "",
        delegation_id: str = "",
        deadline_unix_ms: int = 0,
        timeout_s: float | None = None,
    ) -> tools_pb2.ToolResult:
        """Run a tool; a result that does not come in time is a TIMEOUT error result."""
        args = arguments if isinstance(arguments, str) else json.dumps(arguments)
        call = tools_pb2.ToolCall(
            call_id=call_id,
            tool=tool,
            schema=schema,
            arguments_json=args,
            deadline_unix_ms=deadline_unix_ms,
            session_id=session_id,
            delegation_id=delegation_id,
        )
        timeout = timeout_s or self.timeout_s
        if deadline_unix_ms:
            timeout = min(timeout, max(deadline_unix_ms / 1000 - time.time(), 0.001))
        return await self.send(call, timeout)

    def _read(self, call: tools_pb2.ToolCall, data: bytes) -> tools_pb2.ToolResult:
        """The result on the result subject; anything else there is a typed error, not a crash."""
        result = tools_pb2.ToolResult()
        try:
            result.ParseFromString(data)
            if result.call_id != call.call_id or result.WhichOneof("outcome") is None:
                raise ValueError("not the result of this call")
        except Exception as exc:
            self.rejections.record(
                rejects.UNDECODABLE, f"result of {call.tool[:64]} call {call.call_id}: {exc}"
            )
            return tools_pb2.ToolResult(
                call_id=call.call_id,
                error=tools_pb2.ToolError(
                    code=Code.TOOL_ERROR_CODE_EXECUTION_FAILED,
                    message=f"{call.tool[:64]}: the tool service sent an unreadable result",
                ),
            )
        return result

    async def send(self, call: tools_pb2.ToolCall, timeout_s: float) -> tools_pb2.ToolResult:
        subject = subjects.tool_result_subject(call.call_id)
        sub = await self.bus.nc.subscribe(subject)
        try:
            await self.bus.publish(subjects.TOOL_CALL, call, msg_id=call.call_id, headers=trace_headers())
            deadline = time.monotonic() + timeout_s
            while (left := deadline - time.monotonic()) > 0:
                try:
                    msg = await sub.next_msg(timeout=min(left, 1.0))
                    data = msg.data
                except (TimeoutError, NatsTimeoutError):
                    # Missed while reconnecting, or answered before we listened: read the stored copy.
                    stored = await self.bus.last_message(subjects.TOOL_RESULTS_STREAM, subject)
                    if stored is None:
                        continue
                    data = stored.data
                return self._read(call, data)
            return tools_pb2.ToolResult(
                call_id=call.call_id,
                error=tools_pb2.ToolError(
                    code=Code.TOOL_ERROR_CODE_TIMEOUT,
                    message=f"{call.tool}: no result within {timeout_s:.3g}s",
                ),
            )
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
