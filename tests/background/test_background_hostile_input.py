"""Hostile input to the background service's delegation consumer, with a real nats-server: each
test is a regression test of a defect of the old code (the docstrings say which). Every delegation
with usable ids still ends with one typed update, on its first attempt."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from background_helpers import collect, make_settings, request
from prometheus_client import REGISTRY

from microturn.background import BackgroundService
from microturn.bus import Bus, DelegationClient, subjects
from microturn.config import TelemetrySettings
from microturn.telemetry import setup_telemetry
from microturn.tools import call_id_for
from microturn.v1 import delegation_pb2, tools_pb2

Code = delegation_pb2.DelegationErrorCode


def rejected(kind: str, code: str) -> float:
    """``microturn_<kind>_rejected_total{code}`` as the service exports it (0 before the first)."""
    setup_telemetry("tests", TelemetrySettings())  # idempotent: the first set-up of the process
    name = f"microturn_{kind}_rejected_total"
    return sum(
        s.value
        for family in REGISTRY.collect()
        for s in family.samples
        if s.name == name and s.labels.get("code") == code
    )


@pytest.fixture
async def background(nats_server):
    """The background service alone (no tools service: what a tool would answer is set up by the test)."""
    settings = make_settings(nats_server.url, background={"tool_timeout_s": 10.0})
    service = BackgroundService(settings)
    await service.start()
    bus = await Bus.connect(nats_server.url, settings.bus, name="test-interaction")
    try:
        yield DelegationClient(bus)
    finally:
        await bus.close()
        await service.stop()


async def ask(client: DelegationClient, req: delegation_pb2.DelegationRequest):
    updates = await client.session_updates(req.session_id)
    try:
        await client.delegate(req)
        return await collect(updates, req.delegation_id)
    finally:
        await updates.close()


@pytest.mark.timeout(120)
async def test_overlong_request_is_refused_at_once(background):
    """Old: no limit on the request, and the planner's "show ... card" pattern backtracked
    quadratically over it, blocking the service's event loop (60 KB: seconds; 1 MB: most of an
    hour, with no heartbeats, so the delegation was redelivered to the next instance to block)."""
    before = rejected("delegations", "too_large")
    got = await ask(background, request("s-long", "show " * 12_000))
    assert [u.WhichOneof("kind") for u in got] == ["error"]
    assert got[0].error.code == Code.DELEGATION_ERROR_CODE_UNSUPPORTED
    assert "limit is 4000" in got[0].error.message
    assert rejected("delegations", "too_large") == before + 1


async def test_unreadable_stored_cancellation_still_cancels(background):
    """Old: parsing the stored CancelDelegation raised, every attempt crashed, and the session was
    told INTERNAL ("gave up") after all retries instead of CANCELLED."""
    req = request("s-cancel", "what is 1 + 1")
    before = rejected("cancels", "undecodable")
    await background.bus.publish(subjects.cancel_subject("s-cancel", req.delegation_id), b"\xff\xfe garbage")
    # The live cancel subscription refuses it once as it passes (asynchronously: wait for that)...
    deadline = time.monotonic() + 20
    while rejected("cancels", "undecodable") < before + 1:
        assert time.monotonic() < deadline, "the live cancellation was not refused"
        await asyncio.sleep(0.05)
    got = await ask(background, req)
    assert [u.WhichOneof("kind") for u in got] == ["error"]
    assert got[0].error.code == Code.DELEGATION_ERROR_CODE_CANCELLED
    # ...and the stored copy, read when the work starts, once more: counted, and still a cancel.
    assert rejected("cancels", "undecodable") == before + 2


@pytest.mark.parametrize(
    ("stored", "fragment"),
    [
        (b"\xff\xff\xff", "unreadable result"),  # not a ToolResult
        (None, "not a JSON object"),  # a ToolResult whose result_json is not JSON
    ],
)
async def test_unreadable_tool_result_ends_the_delegation_with_tool_failed(background, stored, fragment):
    """Old: an undecodable result (or a result that is not JSON) raised inside the backend: each
    attempt crashed and the delegation ended INTERNAL after all retries."""
    req = request("s-result", "what is 2 + 2")
    call_id = call_id_for(req.delegation_id, 1, "calculator", json.dumps({"expression": "2 + 2"}))
    if stored is None:
        stored = tools_pb2.ToolResult(call_id=call_id, result_json="{oops").SerializeToString()
    await background.bus.publish(subjects.tool_result_subject(call_id), stored, msg_id=call_id)
    got = await ask(background, req)
    assert got[-1].WhichOneof("kind") == "error"
    assert got[-1].error.code == Code.DELEGATION_ERROR_CODE_TOOL_FAILED
    assert fragment in got[-1].error.message


async def test_absurd_timer_duration_is_a_tool_failure_not_a_crash(stack):
    """Old: "999…9 seconds" overflowed to an infinite float and round() raised OverflowError in the
    planner: every attempt crashed, and the session heard INTERNAL after all retries."""
    got = await stack.ask("set a timer for " + "9" * 400 + " seconds")
    assert got[-1].WhichOneof("kind") == "error"
    assert got[-1].error.code == Code.DELEGATION_ERROR_CODE_TOOL_FAILED
    assert "maximum" in got[-1].error.message
