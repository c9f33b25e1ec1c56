"""What a background backend is given and how it reports failure."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from microturn.background.updates import ErrorCode, UpdateStream
from microturn.config import BackgroundSettings
from microturn.tools.client import ToolClient, call_id_for
from microturn.tools.registry import ToolRegistry
from microturn.v1 import delegation_pb2, media_pb2, tools_pb2


class DelegationFailed(Exception):
    """End the delegation with an error update; ``retryable`` asks for another attempt first."""

    def __init__(self, code: int, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable


class ToolCallFailed(Exception):
    def __init__(self, tool: str, error: tools_pb2.ToolError) -> None:
        super().__init__(error.message)
        self.tool = tool
        self.error = error


@dataclass
class Tools:
    """Tool calls for one delegation: ids derived from (delegation, step, arguments), schemas from the catalog."""

    client: ToolClient
    registry: ToolRegistry
    request: delegation_pb2.DelegationRequest
    deadline_unix_ms: int
    steps: int = 0
    calls: list[str] = field(default_factory=list)

    async def call_json(self, tool: str, arguments_json: str) -> tools_pb2.ToolResult:
        spec = self.registry.get(tool)
        self.steps += 1
        self.calls.append(tool)
        call_id = call_id_for(self.request.delegation_id, self.steps, tool, arguments_json)
        limit = spec.max_argument_bytes if spec else 4096
        if len(arguments_json.encode()) > limit:  # refuse here rather than ship it over the bus
            return tools_pb2.ToolResult(
                call_id=call_id,
                error=tools_pb2.ToolError(
                    code=tools_pb2.TOOL_ERROR_CODE_TOO_LARGE,
                    message=f"{tool}: arguments are over the limit of {limit} bytes",
                ),
            )
        return await self.client.call(
            tool,
            arguments_json,
            schema=spec.schema if spec else "",
            call_id=call_id,
            session_id=self.request.session_id,
            delegation_id=self.request.delegation_id,
            # The caller stops waiting at this deadline, so the tool must not run after it either
            # (a timer set after we told the user it failed would be worse than no timer).
            deadline_unix_ms=min(self.deadline_unix_ms, int((time.time() + self.client.timeout_s) * 1000)),
        )

    async def call(self, tool: str, arguments: dict[str, Any]) -> Any:
        """Run a tool and return its JSON result, or raise ToolCallFailed."""
        result = await self.call_json(tool, json.dumps(arguments))
        if result.WhichOneof("outcome") == "error":
            raise ToolCallFailed(tool, result.error)
        try:
            value = json.loads(result.result_json)
        except (ValueError, RecursionError):
            value = None
        if not isinstance(value, dict):  # every built-in tool answers with an object
            raise ToolCallFailed(
                tool,
                tools_pb2.ToolError(
                    code=tools_pb2.TOOL_ERROR_CODE_EXECUTION_FAILED,
                    message="the tool's result is not a JSON object",
                ),
            )
        return value


@dataclass
class DelegationContext:
    request: delegation_pb2.DelegationRequest
    updates: UpdateStream
    tools: Tools
    settings: BackgroundSettings

    @property
    def text(self) -> str:
        """What was asked: the delegation's request, else the user's last words (at most
        ``max_request_chars`` of them: an utterance grows as long as the user keeps talking)."""
        if self.request.context.request.strip():
            return self.request.context.request.strip()
        for u in reversed(self.request.context.utterances):
            if u.speaker == delegation_pb2.SPEAKER_USER and u.text.strip():
                return u.text.strip()[-self.settings.max_request_chars :].strip()
        return ""

    @property
    def timezone(self) -> str:
        return self.request.context.timezone or "UTC"

    def seconds_left(self) -> float:
        return self.tools.deadline_unix_ms / 1000 - time.time()


def card_from_json(value: dict[str, Any]) -> media_pb2.UiCard:
    return media_pb2.UiCard(
        card_id=value.get("card_id", ""),
        title=value.get("title", ""),
        body=value.get("body", ""),
        fields=value.get("fields", {}),
    )


class Backend(Protocol):
    name: str

    async def run(self, ctx: DelegationContext) -> None:
        """Stream updates for the delegation and end with ``ctx.updates.final`` (or raise DelegationFailed)."""

    async def close(self) -> None: ...


__all__ = [
    "Backend",
    "DelegationContext",
    "DelegationFailed",
    "ErrorCode",
    "ToolCallFailed",
    "Tools",
    "card_from_json",
]
