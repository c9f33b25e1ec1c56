"""Tool executor and built-in tools in-process: limits, schemas and hostile input."""

from __future__ import annotations

import asyncio
import json
import time
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from microturn.config import ToolsSettings
from microturn.tools import Tool, ToolExecutor, ToolRegistry, build_registry
from microturn.tools.calculator import CalculatorError, Limits, evaluate
from microturn.v1 import tools_pb2

Code = tools_pb2.ToolErrorCode


class FakeTimers:
    def __init__(self) -> None:
        self.timers: list[dict] = []

    async def schedule(self, timer: dict) -> None:
        self.timers.append(timer)


@pytest.fixture
def executor(tmp_path) -> ToolExecutor:
    settings = ToolsSettings(project_docs_dir=None, knowledge_dir=tmp_path)
    return ToolExecutor(build_registry(settings), timers=FakeTimers())


def call(tool: str, args, schema: str | None = None, **kw) -> tools_pb2.ToolCall:
    text = args if isinstance(args, str) else json.dumps(args)
    return tools_pb2.ToolCall(
        call_id="c1", tool=tool, schema=schema or f"{tool}.v1", arguments_json=text, **kw
    )


async def run(executor: ToolExecutor, c: tools_pb2.ToolCall):
    result = await executor.execute(c)
    if result.WhichOneof("outcome") == "result_json":
        return json.loads(result.result_json)
    return result.error


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("1 + 2 * 3", 7),
        ("2^10", 1024),
        ("(17 - 5) / 4", 3.0),
        ("-3 // 2", -2),
        ("max(2, 7, 5)", 7),
        ("10 % 4", 2),
    ],
)
async def test_calculator_computes(executor, expression, expected):
    out = await run(executor, call("calculator", {"expression": expression}))
    assert out["value"] == expected


@pytest.mark.parametrize(
    ("expression", "fragment"),
    [
        ("__import__('os')", "unknown function '__import__'"),
        ("9**9**9", "exponent"),
        ("2**100000", "exponent"),
        ("10**4000 * 10**4000", "bits"),
        ("(1).__class__", "unsupported syntax"),
        ("[x for x in range(10**9)]", "unsupported syntax"),
        ("open('/etc/passwd')", "unknown function 'open'"),
        ("1/0", "division by zero"),
        ("factorial(100000)", "factorial"),
        ("1e308 * 10", "finite"),
        ("1 +", "not an arithmetic expression"),
        ("10**4000", "bits"),
    ],
)
async def test_calculator_refuses_hostile_expressions_quickly(executor, expression, fragment):
    tracemalloc.start()
    try:
        err = await run(executor, call("calculator", {"expression": expression}))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(err, tools_pb2.ToolError), err
    assert err.code == Code.TOOL_ERROR_CODE_EXECUTION_FAILED
    assert fragment in err.message
    assert peak < 16 << 20  # bounded memory: nothing like 9**9**9 was materialised


@given(st.text(max_size=80))
@settings(max_examples=200, deadline=None)
def test_calculator_never_raises_anything_but_its_error(text):
    try:
        value = evaluate(text, Limits())
    except CalculatorError:
        return
    assert isinstance(value, int | float)


async def test_unknown_tool_and_malformed_input_are_typed_errors(executor):
    err = await run(executor, call("rm_rf", {}))
    assert err.code == Code.TOOL_ERROR_CODE_UNKNOWN_TOOL and "calculator" in err.message
    err = await run(executor, call("calculator", '{"expression": "1+'))
    assert err.code == Code.TOOL_ERROR_CODE_INVALID_ARGUMENTS and "not valid JSON" in err.message
    err = await run(executor, call("calculator", "[1, 2]"))
    assert err.code == Code.TOOL_ERROR_CODE_INVALID_ARGUMENTS and "JSON object" in err.message
    err = await run(executor, call("calculator", {"expression": 5}))
    assert err.code == Code.TOOL_ERROR_CODE_INVALID_ARGUMENTS and "expression" in err.message
    err = await run(executor, call("calculator", {"expression": "1", "extra": 1}))
    assert err.code == Code.TOOL_ERROR_CODE_INVALID_ARGUMENTS
    err = await run(executor, call("calculator", {"expression": "1"}, schema="calculator.v0"))
    assert err.code == Code.TOOL_ERROR_CODE_INVALID_ARGUMENTS and "schema" in err.message
    err = await run(executor, call("calculator", "[" * 3000 + "]" * 3000))
    assert err.code == Code.TOOL_ERROR_CODE_TOO_LARGE


async def test_huge_argument_strings_are_refused_before_parsing(executor):
    huge = json.dumps({"expression": "1+" * 1_000_000 + "1"})
    start = time.process_time()
    err = await run(executor, call("calculator", huge))
    assert err.code == Code.TOOL_ERROR_CODE_TOO_LARGE and "over the limit" in err.message
    err = await run(executor, call("ui_card", {"title": "x" * 100_000}))
    assert err.code == Code.TOOL_ERROR_CODE_TOO_LARGE
    assert time.process_time() - start < 5  # generous: refusing must not scale with the input's cost


async def test_timeout_and_result_size_limits():
    async def slow(args, ctx):
        await asyncio.sleep(10)

    async def big(args, ctx):
        return "x" * 1000

    params = {"type": "object"}
    registry = ToolRegistry(
        [
            Tool("slow", "", "slow.v1", params, slow, timeout_ms=50),
            Tool("big", "", "big.v1", params, big, max_result_bytes=100),
        ]
    )
    ex = ToolExecutor(registry)
    err = await run(ex, call("slow", {}))
    assert err.code == Code.TOOL_ERROR_CODE_TIMEOUT
    err = await run(ex, call("big", {}))
    assert err.code == Code.TOOL_ERROR_CODE_TOO_LARGE and "result" in err.message
    past = int(time.time() * 1000) - 1
    err = await run(ex, call("slow", {}, deadline_unix_ms=past))
    assert err.code == Code.TOOL_ERROR_CODE_TIMEOUT


async def test_clock_knows_zones_and_cities(executor):
    out = await run(executor, call("clock", {"timezone": "Tokyo"}))
    assert out["timezone"] == "Asia/Tokyo" and out["utc_offset"] == "+0900"
    out = await run(executor, call("clock", {"timezone": "Europe/Paris"}))
    assert out["timezone"] == "Europe/Paris"
    err = await run(executor, call("clock", {"timezone": "Atlantis"}))
    assert err.code == Code.TOOL_ERROR_CODE_EXECUTION_FAILED and "Atlantis" in err.message


async def test_timer_is_scheduled_with_session_and_limits(executor):
    out = await run(executor, call("timer", {"seconds": 90, "label": "tea"}, session_id="s1"))
    assert out["duration"] == "1 minute 30 seconds" and out["label"] == "tea"
    [timer] = executor.timers.timers
    assert timer["session_id"] == "s1" and timer["fires_unix_ms"] - timer["created_unix_ms"] == 90_000
    err = await run(executor, call("timer", {"seconds": 10**9}, session_id="s1"))
    assert err.code == Code.TOOL_ERROR_CODE_INVALID_ARGUMENTS
    err = await run(executor, call("timer", {"seconds": 5}))
    assert err.code == Code.TOOL_ERROR_CODE_EXECUTION_FAILED and "session" in err.message


async def test_ui_card_is_normalised(executor):
    out = await run(executor, call("ui_card", {"title": " Weather ", "fields": {"Paris": "18°C"}}))
    assert out == {"card_id": "card-c1", "title": "Weather", "body": "", "fields": {"Paris": "18°C"}}
    err = await run(executor, call("ui_card", {"title": "x", "fields": {str(i): "v" for i in range(20)}}))
    assert err.code == Code.TOOL_ERROR_CODE_INVALID_ARGUMENTS


def test_every_tool_publishes_a_spec_with_limits(executor):
    specs = [t.spec() for t in executor.registry]
    assert {s.name for s in specs} == {"calculator", "clock", "timer", "knowledge_search", "ui_card"}
    for s in specs:
        assert s.timeout_ms > 0 and s.max_argument_bytes > 0 and s.max_result_bytes > 0
        assert json.loads(s.arguments_json_schema)["type"] == "object"
