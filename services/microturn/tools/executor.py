"""Run one tool call under its limits, turning every failure into a typed ToolResult error.

The order of checks is the order of cost: name, argument size, schema name, caller ids, JSON (no
unpaired surrogates: a result echoing one could not be sent), JSON schema, then the tool itself
under its timeout (or the call's deadline, if sooner), then the result size. Whole-number floats
(``3.0``) given for integer arguments reach the tool as ints. Nothing a caller sends raises out of
:meth:`ToolExecutor.execute`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from microturn.bus import subjects
from microturn.telemetry import RateLimitedLog
from microturn.tools.registry import TimerScheduler, Tool, ToolContext, ToolFailed, ToolRegistry
from microturn.v1 import tools_pb2

log = logging.getLogger(__name__)
crash_log = RateLimitedLog(log)  # a crash on hostile input must not become a traceback per call
Code = tools_pb2.ToolErrorCode


class _Error(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ToolExecutor:
    def __init__(self, registry: ToolRegistry, timers: TimerScheduler | None = None) -> None:
        self.registry = registry
        self.timers = timers
        self._validators = {t.name: Draft202012Validator(t.parameters) for t in registry}
        for tool in registry:
            Draft202012Validator.check_schema(tool.parameters)

    async def execute(self, call: tools_pb2.ToolCall) -> tools_pb2.ToolResult:
        start = time.perf_counter()
        try:
            result_json = await self._execute(call)
            result = tools_pb2.ToolResult(call_id=call.call_id, result_json=result_json)
        except _Error as err:
            result = tools_pb2.ToolResult(
                call_id=call.call_id, error=tools_pb2.ToolError(code=err.code, message=err.message)
            )
        except Exception as exc:  # a bug, but the caller still gets an answer and the service goes on
            crash_log.log(
                "executor",
                "tool call %s failed unexpectedly: %s",
                call.call_id,
                type(exc).__name__,
                exc_info=True,
            )
            result = tools_pb2.ToolResult(
                call_id=call.call_id,
                error=tools_pb2.ToolError(
                    code=Code.TOOL_ERROR_CODE_EXECUTION_FAILED, message=f"{call.tool[:64]}: internal error"
                ),
            )
        result.duration_us = min(int((time.perf_counter() - start) * 1e6), 2**32 - 1)
        return result

    async def _execute(self, call: tools_pb2.ToolCall) -> str:
        tool = self.registry.get(call.tool)
        if tool is None:
            raise _Error(
                Code.TOOL_ERROR_CODE_UNKNOWN_TOOL,
                f"unknown tool {call.tool[:64]!r}; available: {', '.join(self.registry.names())}",
            )
        args = self._arguments(tool, call)
        timeout_s = tool.timeout_ms / 1000
        if call.deadline_unix_ms:
            timeout_s = min(timeout_s, call.deadline_unix_ms / 1000 - time.time())
            if timeout_s <= 0:
                raise _Error(Code.TOOL_ERROR_CODE_TIMEOUT, f"{tool.name}: deadline already passed")
        ctx = ToolContext(call.call_id, call.session_id, call.delegation_id, self.timers)
        try:
            value = await asyncio.wait_for(tool.run(args, ctx), timeout_s)
        except TimeoutError:
            raise _Error(
                Code.TOOL_ERROR_CODE_TIMEOUT, f"{tool.name} did not finish within {timeout_s:.3g}s"
            ) from None
        except ToolFailed as exc:
            raise _Error(Code.TOOL_ERROR_CODE_EXECUTION_FAILED, f"{tool.name}: {exc}") from None
        except Exception as exc:
            crash_log.log(tool.name, "tool %s crashed: %s", tool.name, type(exc).__name__, exc_info=True)
            raise _Error(Code.TOOL_ERROR_CODE_EXECUTION_FAILED, f"{tool.name}: internal error") from None
        try:
            out = json.dumps(value, ensure_ascii=False, allow_nan=False)
        except ValueError as exc:
            raise _Error(
                Code.TOOL_ERROR_CODE_EXECUTION_FAILED, f"{tool.name}: result is not JSON: {exc}"
            ) from None
        size = len(out.encode())
        if size > tool.max_result_bytes:
            raise _Error(
                Code.TOOL_ERROR_CODE_TOO_LARGE,
                f"{tool.name}: result is {size} bytes, over the limit of {tool.max_result_bytes}",
            )
        return out

    def _arguments(self, tool: Tool, call: tools_pb2.ToolCall) -> dict[str, Any]:
        size = len(call.arguments_json.encode())
        if size > tool.max_argument_bytes:
            raise _Error(
                Code.TOOL_ERROR_CODE_TOO_LARGE,
                f"{tool.name}: arguments are {size} bytes, over the limit of {tool.max_argument_bytes}",
            )
        if call.schema != tool.schema:
            raise _Error(
                Code.TOOL_ERROR_CODE_INVALID_ARGUMENTS,
                f"{tool.name}: schema {call.schema[:64]!r} does not match the tool's {tool.schema!r}",
            )
        for name, value in (("session_id", call.session_id), ("delegation_id", call.delegation_id)):
            if value and not subjects.is_id(value):
                raise _Error(
                    Code.TOOL_ERROR_CODE_INVALID_ARGUMENTS,
                    f"{tool.name}: {name} must be 1-128 letters, digits, '_' or '-' (got {len(value)} characters)",
                )
        try:
            args = json.loads(call.arguments_json or "{}")
        except (ValueError, RecursionError) as exc:
            raise _Error(
                Code.TOOL_ERROR_CODE_INVALID_ARGUMENTS, f"{tool.name}: arguments are not valid JSON: {exc}"
            ) from None
        if not isinstance(args, dict):
            raise _Error(
                Code.TOOL_ERROR_CODE_INVALID_ARGUMENTS,
                f"{tool.name}: arguments must be a JSON object, got {type(args).__name__}",
            )
        if _has_lone_surrogate(args):
            raise _Error(
                Code.TOOL_ERROR_CODE_INVALID_ARGUMENTS,
                f"{tool.name}: arguments hold an unpaired UTF-16 surrogate (\\ud800-\\udfff), which is not text",
            )
        error = best_match(self._validators[tool.name].iter_errors(args))
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "arguments"
            raise _Error(
                Code.TOOL_ERROR_CODE_INVALID_ARGUMENTS, f"{tool.name}: {where}: {error.message[:300]}"
            )
        return _whole_numbers(tool, args)


def _has_lone_surrogate(value: Any) -> bool:
    """Any string (key or value) in a parsed JSON value that is not encodable as UTF-8: JSON allows
    ``"\\ud800"`` escapes, but protobuf strings (the result, the logs' JSON) cannot carry them."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            try:
                v.encode()
            except UnicodeEncodeError:
                return True
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return False


def _whole_numbers(tool: Tool, args: dict[str, Any]) -> dict[str, Any]:
    """JSON Schema counts ``3.0`` as an integer; the tools index and count with it, so hand them ``3``."""
    props = tool.parameters.get("properties", {})
    for key, value in args.items():
        if isinstance(value, float) and props.get(key, {}).get("type") == "integer":
            args[key] = int(value)
    return args
