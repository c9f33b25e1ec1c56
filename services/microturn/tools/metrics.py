"""Tool-service metrics (served on /metrics): calls by tool and outcome, time in the tool, timers fired.

Unknown tool names are folded into one label value, so a caller cannot blow up the label set.
"""

from __future__ import annotations

from opentelemetry import metrics

from microturn.tools.executor import ToolExecutor
from microturn.v1 import tools_pb2

meter = metrics.get_meter("microturn.tools")
TOOL_CALLS = meter.create_counter(
    "microturn_tool_calls", unit="{call}", description="tool calls served, by tool, outcome and transport"
)
TOOL_MS = meter.create_histogram(
    "microturn_tool_duration", unit="ms", description="time in the tool, by tool"
)
TIMERS_FIRED = meter.create_counter("microturn_timers_fired", unit="{timer}", description="timers that fired")


def record_call(
    executor: ToolExecutor, call: tools_pb2.ToolCall, result: tools_pb2.ToolResult, via: str
) -> None:
    tool = call.tool if executor.registry.get(call.tool) is not None else "(unknown)"
    failed = result.WhichOneof("outcome") == "error"
    outcome = tools_pb2.ToolErrorCode.Name(result.error.code) if failed else "ok"
    TOOL_CALLS.add(1, {"tool": tool, "outcome": outcome, "via": via})
    TOOL_MS.record(result.duration_us / 1000, {"tool": tool})
