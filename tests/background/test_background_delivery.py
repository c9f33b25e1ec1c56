"""Delivery guarantees with the services in-process: NATS restarted mid-flow, undecodable requests,
cancellation (live and before start), deadlines, and spans that tie a delegation to its tool calls."""

from __future__ import annotations

import asyncio

import pytest
from background_helpers import Stack, collect, collect_many, kinds, make_settings, request
from opentelemetry import trace

from microturn.background import BackgroundService, DelegationContext
from microturn.bus import Bus, CancelReason, DelegationClient, subjects
from microturn.bus.connection import DEAD_DELIVERIES, DEAD_REASON
from microturn.tools.service import ToolsService
from microturn.v1 import delegation_pb2, tools_pb2

ErrorCode = delegation_pb2.DelegationErrorCode


async def test_nats_restart_mid_flow_loses_nothing(stack: Stack, nats_server):
    sessions = ["s-r1", "s-r2"]
    readers = {s: await stack.client.session_updates(s) for s in sessions}
    reqs = [request(sessions[k % 2], f"what is {k} * 3") for k in range(16)]
    timer = request("s-r1", "remind me in 3 seconds to stir")
    try:
        await stack.client.delegate(timer)
        for req in reqs[:8]:
            await stack.client.delegate(req)
        # File storage: streams, consumers, unread updates and the pending timer survive.
        await asyncio.to_thread(nats_server.restart)
        for req in reqs[8:]:
            await stack.client.delegate(req)
        got = {}
        for s in sessions:
            ids = {r.delegation_id for r in reqs if r.session_id == s}
            if s == "s-r1":
                ids.add(timer.delegation_id)
            got.update(await collect_many(readers[s], ids))
        fired = [u for d, us in got.items() if d.startswith("timer-") for u in us]
        if not fired:  # not due yet when the answers were in
            delivery = await readers["s-r1"].next(timeout_s=30)
            assert delivery is not None
            fired = [delivery.update]
        assert len(fired) == 1 and "stir" in fired[0].final.text
    finally:
        for r in readers.values():
            await r.close()
    for k, req in enumerate(reqs):
        updates = got[req.delegation_id]
        assert kinds(updates).count("final") == 1
        assert updates[-1].final.text == f"{k} * 3 = {3 * k}"
        assert [u.seq for u in updates] == list(range(1, len(updates) + 1))


async def test_undecodable_requests_are_dead_lettered_at_once(stack: Stack):
    bus = stack.bus
    sub = await bus.js.subscribe(
        subjects.dead_subject("delegation"), stream=subjects.DEAD_STREAM, ordered_consumer=True
    )
    try:
        await bus.publish(subjects.DELEGATION_REQUEST, b"\xff\xff\xff not protobuf", msg_id="junk-1")
        bad_id = delegation_pb2.DelegationRequest(delegation_id="x.y", session_id="s1")
        await bus.publish(subjects.DELEGATION_REQUEST, bad_id, msg_id="junk-2")
        dead = [await sub.next_msg(timeout=10) for _ in range(2)]
    finally:
        await sub.unsubscribe()
    assert [d.headers[DEAD_DELIVERIES] for d in dead] == ["1", "1"]
    assert "not a usable DelegationRequest" in dead[0].headers[DEAD_REASON]
    assert "'x.y'" in dead[1].headers[DEAD_REASON]
    assert (await stack.ask("what is 2 + 2"))[-1].final.text == "2 + 2 = 4"  # still serving


class SlowBackend:
    """Streams a partial, then waits: stands in for a long reasoning step."""

    name = "slow"

    def __init__(self) -> None:
        self.started = asyncio.Event()

    async def run(self, ctx: DelegationContext) -> None:
        await ctx.updates.partial("thinking… ")
        self.started.set()
        await asyncio.sleep(3600)

    async def close(self) -> None:
        pass


@pytest.fixture
async def slow_stack(nats_server):
    settings = make_settings(nats_server.url)
    backend = SlowBackend()
    background = BackgroundService(settings, backend=backend)
    await background.start()
    bus = await Bus.connect(nats_server.url, settings.bus)
    try:
        yield Stack(settings, DelegationClient(bus), bus), backend
    finally:
        await bus.close()
        await background.stop()


async def test_cancel_while_running(slow_stack):
    stack, backend = slow_stack
    updates = await stack.client.session_updates("s-cancel")
    try:
        req = request("s-cancel", "think hard")
        await stack.client.delegate(req)
        await asyncio.wait_for(backend.started.wait(), 10)
        await stack.client.cancel("s-cancel", req.delegation_id)
        got = await collect(updates, req.delegation_id)
    finally:
        await updates.close()
    assert kinds(got) == ["partial", "error"]
    assert got[-1].error.code == ErrorCode.DELEGATION_ERROR_CODE_CANCELLED


async def test_closed_session_cancels_work_not_started_yet(slow_stack):
    stack, backend = slow_stack
    await stack.client.cancel("s-closed", reason=CancelReason.CANCEL_REASON_SESSION_CLOSED)
    updates = await stack.client.session_updates("s-closed")
    try:
        req = request("s-closed", "think hard")
        await stack.client.delegate(req)
        got = await collect(updates, req.delegation_id)
    finally:
        await updates.close()
    assert kinds(got) == ["error"] and "session closed" in got[0].error.message
    assert not backend.started.is_set()


async def test_deadline_is_enforced(slow_stack):
    stack, _ = slow_stack
    got = await stack.ask("think hard", deadline_s=1.0)
    assert kinds(got) == ["partial", "error"]
    assert got[-1].error.code == ErrorCode.DELEGATION_ERROR_CODE_DEADLINE_EXCEEDED


async def test_spans_link_a_delegation_to_its_tool_calls(nats_server, spans):
    exporter = spans
    settings = make_settings(nats_server.url)
    tools, background = ToolsService(settings), BackgroundService(settings)
    await tools.start()
    await background.start()
    bus = await Bus.connect(nats_server.url, settings.bus)
    try:
        tracer = trace.get_tracer("test.interaction")
        with tracer.start_as_current_span("interaction tick") as root:
            got = await Stack(settings, DelegationClient(bus), bus).ask("what is 6 * 7", session_id="s-trace")
        assert got[-1].final.text == "6 * 7 = 42"
    finally:
        await bus.close()
        await background.stop()
        await tools.stop()
    spans = exporter.get_finished_spans()
    delegation = next(s for s in spans if s.name == "delegation")
    tool = next(s for s in spans if s.name == "tool calculator")
    trace_id = root.get_span_context().trace_id
    assert delegation.context.trace_id == trace_id and tool.context.trace_id == trace_id
    assert delegation.attributes["session.id"] == tool.attributes["session.id"] == "s-trace"
    assert tool.attributes["delegation.id"] == delegation.attributes["delegation.id"]
    assert [e.attributes["update.kind"] for e in delegation.events] == ["partial", "final"]


async def test_tool_call_the_caller_gave_up_on_is_not_run_later(nats_server):
    """Tools down: the delegation fails after tool_timeout_s, and the queued call, picked up once
    the tools come back, is refused as past its deadline instead of acting late (e.g. a timer)."""
    settings = make_settings(nats_server.url, background={"tool_timeout_s": 1.0})
    background = BackgroundService(settings)
    await background.start()
    bus = await Bus.connect(nats_server.url, settings.bus)
    tools = ToolsService(settings)
    try:
        got = await Stack(settings, DelegationClient(bus), bus).ask("set a timer for 5 minutes")
        assert got[-1].error.code == ErrorCode.DELEGATION_ERROR_CODE_TOOL_FAILED
        assert "no result within" in got[-1].error.message
        await tools.start()
        sub = await bus.js.subscribe(
            subjects.TOOL_RESULTS.replace("*", ">"),
            stream=subjects.TOOL_RESULTS_STREAM,
            ordered_consumer=True,
        )
        result = tools_pb2.ToolResult.FromString((await sub.next_msg(timeout=15)).data)
        await sub.unsubscribe()
        assert result.error.code == tools_pb2.TOOL_ERROR_CODE_TIMEOUT and "deadline" in result.error.message
        info = await bus.js.stream_info(subjects.TIMERS_STREAM)
        assert info.state.messages == 0  # no timer was set behind the user's back
    finally:
        await bus.close()
        await background.stop()
        await tools.stop()
