"""The ``openai`` backend against a local server that speaks the streaming + tool-call protocol."""

from __future__ import annotations

import pytest
from background_helpers import Stack, kinds, make_settings
from fake_openai import fake_openai_server

from microturn.background import BackgroundService
from microturn.bus import Bus, DelegationClient, subjects
from microturn.bus.connection import DEAD_DELIVERIES
from microturn.tools.service import ToolsService
from microturn.v1 import delegation_pb2

ErrorCode = delegation_pb2.DelegationErrorCode


@pytest.fixture
async def openai_stack(nats_server):
    async with fake_openai_server() as (url, requests):
        settings = make_settings(nats_server.url, background={"backend": "openai", "openai_base_url": url})
        tools, background = ToolsService(settings), BackgroundService(settings)
        await tools.start()
        await background.start()
        bus = await Bus.connect(nats_server.url, settings.bus)
        try:
            yield Stack(settings, DelegationClient(bus), bus), requests
        finally:
            await bus.close()
            await background.stop()
            await tools.stop()


async def test_streamed_tool_call_runs_the_tool_and_streams_the_answer(openai_stack):
    stack, requests = openai_stack
    updates = await stack.ask("please compute 12*(3+4)")
    assert kinds(updates)[-1] == "final"
    assert updates[-1].final.text == "The answer is 84."
    streamed = "".join(u.partial.text for u in updates if u.WhichOneof("kind") == "partial")
    assert streamed.startswith("Let me work that out.") and "84" in streamed
    first, second = requests
    system, *_, user = first["messages"]
    assert system["role"] == "system" and "time zone: UTC" in system["content"]
    assert user == {"role": "user", "content": "[delegated request] please compute 12*(3+4)"}
    assert {"role": "user", "content": "please compute 12*(3+4)"} in first["messages"]  # the conversation
    assert first["stream"] is True and {t["function"]["name"] for t in first["tools"]} >= {
        "calculator",
        "clock",
    }
    # The tool really ran: its result went back to the model with the call's id.
    tool_msg = second["messages"][-1]
    assert (
        tool_msg["role"] == "tool"
        and tool_msg["tool_call_id"] == "call_1"
        and '"value": 84' in tool_msg["content"]
    )
    assert second["messages"][-2]["tool_calls"][0]["function"]["arguments"] == '{"expression": "12*(3+4)"}'


async def test_ui_card_tool_call_is_pushed_to_the_session(openai_stack):
    stack, _ = openai_stack
    updates = await stack.ask("card Weekly summary")
    assert kinds(updates) == ["ui_card", "partial", "final"]
    assert updates[0].ui_card.title == "Weekly summary"


async def test_endpoint_failure_is_retried_then_reported(openai_stack):
    stack, requests = openai_stack
    updates = await stack.ask("this will fail")
    assert kinds(updates) == ["error"]
    assert updates[0].error.code == ErrorCode.DELEGATION_ERROR_CODE_BACKEND_UNAVAILABLE
    assert "500" in updates[0].error.message
    assert len(requests) == stack.settings.bus.max_attempts  # one request per attempt
    # ...and the request itself ends in the dead-letter subject, with how often it was tried.
    sub = await stack.bus.js.subscribe(
        subjects.dead_subject("delegation"), stream=subjects.DEAD_STREAM, ordered_consumer=True
    )
    dead = await sub.next_msg(timeout=10)
    await sub.unsubscribe()
    assert dead.headers[DEAD_DELIVERIES] == str(stack.settings.bus.max_attempts)
    req = delegation_pb2.DelegationRequest.FromString(dead.data)
    assert req.delegation_id == updates[0].delegation_id
