"""What a tool is: a name, a JSON schema for its arguments, an async function, and its limits."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from microturn.v1 import tools_pb2


class ToolFailed(Exception):
    """The tool ran and refused or failed; the message is shown to the caller as is."""


class TimerScheduler(Protocol):
    async def schedule(self, timer: dict[str, Any]) -> None: ...


@dataclass
class ToolContext:
    """Who is calling, for tools that act on a session (timers) and for tracing."""

    call_id: str
    session_id: str
    delegation_id: str
    timers: TimerScheduler | None = None


ToolFn = Callable[[dict[str, Any], ToolContext], Awaitable[Any]]


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    schema: str
    parameters: dict[str, Any]
    run: ToolFn = field(repr=False)
    timeout_ms: int = 2000
    max_argument_bytes: int = 4096
    max_result_bytes: int = 16_384

    def spec(self) -> tools_pb2.ToolSpec:
        return tools_pb2.ToolSpec(
            name=self.name,
            description=self.description,
            schema=self.schema,
            arguments_json_schema=json.dumps(self.parameters),
            timeout_ms=self.timeout_ms,
            max_argument_bytes=self.max_argument_bytes,
            max_result_bytes=self.max_result_bytes,
        )

    def openai_function(self) -> dict[str, Any]:
        """The tool as an OpenAI chat-completions ``tools`` entry."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }


class ToolRegistry:
    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        for tool in tools:
            self.add(tool)

    def add(self, tool: Tool) -> None:
        if tool.name in self._tools:
            raise ValueError(f"tool {tool.name!r} registered twice")
        self._tools[tool.name] = tool

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def names(self) -> list[str]:
        return sorted(self._tools)

    def __iter__(self):
        return iter(self._tools.values())
