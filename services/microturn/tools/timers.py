"""Timers and reminders: the tool stores the timer in the MT_TIMERS stream, where it waits (nak'ed
with a delay until due) and survives restarts; when due, the tool service publishes a final
background update to the session. The timer id is the call id, so a retried call sets one timer."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

from microturn.bus import Bus, subjects, trace_headers
from microturn.tools.registry import Tool, ToolContext, ToolFailed

MAX_LABEL_CHARS = 200


class BusTimerScheduler:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    async def schedule(self, timer: dict[str, Any]) -> None:
        await self.bus.publish(
            subjects.timer_subject(timer["session_id"]),
            json.dumps(timer).encode(),
            msg_id=f"timer-{timer['timer_id']}",
            headers=trace_headers(),
        )


def describe(seconds: int) -> str:
    parts = []
    for unit, size in (("hour", 3600), ("minute", 60), ("second", 1)):
        n, seconds = divmod(seconds, size)
        if n:
            parts.append(f"{n} {unit}{'s' if n != 1 else ''}")
    return " ".join(parts) or "0 seconds"


def timer_tool(max_seconds: int) -> Tool:
    async def run(args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
        if ctx.timers is None:
            raise ToolFailed("timers are not available on this server")
        if not ctx.session_id:
            raise ToolFailed("a timer needs the session it belongs to (session_id)")
        try:
            subjects.check_id("session id", ctx.session_id)
            subjects.check_id("call id", ctx.call_id)
        except subjects.InvalidIdError as exc:
            raise ToolFailed(str(exc)) from None
        now_ms = int(time.time() * 1000)
        timer = {
            "timer_id": ctx.call_id,
            "session_id": ctx.session_id,
            "delegation_id": ctx.delegation_id,
            "label": args.get("label", "").strip(),
            "seconds": args["seconds"],
            "created_unix_ms": now_ms,
            "fires_unix_ms": now_ms + args["seconds"] * 1000,
        }
        await ctx.timers.schedule(timer)
        fires = datetime.fromtimestamp(timer["fires_unix_ms"] / 1000, UTC)
        return {
            "timer_id": timer["timer_id"],
            "label": timer["label"],
            "seconds": timer["seconds"],
            "duration": describe(timer["seconds"]),
            "fires_at": fires.isoformat(timespec="seconds"),
            "fires_unix_ms": timer["fires_unix_ms"],
        }

    return Tool(
        name="timer",
        description="Set a timer or reminder; when it is due the user is told (with the label).",
        schema="timer.v1",
        parameters={
            "type": "object",
            "properties": {
                "seconds": {"type": "integer", "minimum": 1, "maximum": max_seconds},
                "label": {"type": "string", "maxLength": MAX_LABEL_CHARS},
            },
            "required": ["seconds"],
            "additionalProperties": False,
        },
        run=run,
        timeout_ms=5000,
        max_argument_bytes=1024,
        max_result_bytes=1024,
    )


def timer_update_id(timer_id: str) -> str:
    return f"timer-{timer_id[:120]}"


def due_text(timer: dict[str, Any]) -> str:
    what = f" for {timer['label']}" if timer.get("label") else ""
    return f"Time's up: your {describe(int(timer['seconds']))} timer{what} is done."
