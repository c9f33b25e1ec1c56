"""Hostile tool-call input in-process: every case is a regression test of a defect of the old
executor or calculator (the docstrings say which); nothing raises out of the executor."""

from __future__ import annotations

import json

import pytest

from microturn.config import ToolsSettings
from microturn.tools import Tool, ToolExecutor, ToolRegistry, build_registry
from microturn.tools.calculator import CalculatorError, evaluate
from microturn.v1 import tools_pb2

Code = tools_pb2.ToolErrorCode


@pytest.fixture
def executor(tmp_path) -> ToolExecutor:
    return ToolExecutor(build_registry(ToolsSettings(project_docs_dir=None, knowledge_dir=tmp_path)))


def call(tool: str, arguments_json: str, **kw) -> tools_pb2.ToolCall:
    return tools_pb2.ToolCall(
        call_id="c1", tool=tool, schema=f"{tool}.v1", arguments_json=arguments_json, **kw
    )


@pytest.mark.parametrize(
    "arguments_json",
    [
        '{"title": "\\ud800"}',  # echoed into the card: the ToolResult could not be built
        '{"title": "ok", "fields": {"\\udfff": "v"}}',  # in a key
        '{"title": "ok", "body": "a\\udc00b"}',
    ],
)
async def test_unpaired_surrogate_in_arguments_is_invalid_arguments(executor, arguments_json):
    """Old: UnicodeEncodeError raised out of execute() (over the bus: retried, dead-lettered, the
    caller timed out; over gRPC: an INTERNAL status)."""
    result = await executor.execute(call("ui_card", arguments_json))
    assert result.WhichOneof("outcome") == "error"
    assert result.error.code == Code.TOOL_ERROR_CODE_INVALID_ARGUMENTS
    assert "surrogate" in result.error.message


async def test_a_tool_result_that_cannot_be_sent_is_a_typed_error():
    """Old: a result string the protobuf could not carry raised out of execute()."""

    async def run(args, ctx):
        return {"echo": "\udbff"}

    tool = Tool("echo", "echo", "echo.v1", {"type": "object"}, run)
    result = await ToolExecutor(ToolRegistry([tool])).execute(call("echo", "{}"))
    assert result.WhichOneof("outcome") == "error"
    assert result.error.code == Code.TOOL_ERROR_CODE_EXECUTION_FAILED


async def test_whole_number_float_reaches_an_integer_argument_as_an_int():
    """Old: JSON Schema accepts 3.0 as an integer and the tool got the float: knowledge_search's
    ``top_k: 3.0`` crashed in the slice it takes of the ranking."""

    async def run(args, ctx):
        return {"first": list(range(10))[: args["n"]]}

    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 10}}}
    tool = Tool("firsts", "first n", "firsts.v1", schema, run)
    result = await ToolExecutor(ToolRegistry([tool])).execute(call("firsts", '{"n": 3.0}'))
    assert result.WhichOneof("outcome") == "result_json", result.error.message
    assert json.loads(result.result_json) == {"first": [0, 1, 2]}


@pytest.mark.parametrize("field", ["session_id", "delegation_id"])
async def test_caller_ids_that_are_not_bus_ids_are_refused(executor, field):
    """Old: a session or delegation id of any size and content went into every log line and span
    of the call."""
    result = await executor.execute(call("clock", "{}", **{field: "x" * 100_000}))
    assert result.error.code == Code.TOOL_ERROR_CODE_INVALID_ARGUMENTS
    assert field in result.error.message and len(result.error.message) < 300
    ok = await executor.execute(call("clock", "{}", **{field: "s-1"}))
    assert ok.WhichOneof("outcome") == "result_json"


@pytest.mark.parametrize("expression", ["round(1, -10**6)", "round(7, -10001)"])
def test_round_with_a_huge_number_of_digits_is_refused(expression):
    """Old: round(1, -10**n) computes 10**(10**n): -10**6 took a fraction of a second, -10**300
    would never finish, and the tool ran on the event loop, so the whole service stalled."""
    with pytest.raises(CalculatorError, match="round"):
        evaluate(expression)
    assert evaluate("round(1234, -2)") == 1200 and evaluate("round(2.567, 2)") == 2.57
