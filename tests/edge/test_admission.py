"""Admission while every replica is full: the edge holds a new call in "waiting", retrying its
session open at the pace the replica asks for, and the call goes live once a slot frees (what a
scale-up brings) without the browser doing anything; past edge.open_retry_s it ends with the typed
over-capacity error instead of hanging."""

from __future__ import annotations

import pytest

from ..interaction.conftest import new_session, session_origin
from .conftest import wait_until
from .webrtc_client import EdgeClient

SLOTS = 4  # the edge_stack replica's session_slots


async def fill(stack) -> list:
    """Hold every slot of the replica with sessions opened straight over gRPC."""
    t0 = session_origin()
    held = [new_session(stack.edge.channel, f"s-fill-{i}", t0) for i in range(SLOTS)]
    for s in held:
        await s.open()
    return held


def states(client: EdgeClient) -> list[str]:
    return [e.get("state") for e in client.events if e.get("type") == "state"]


@pytest.mark.parametrize("edge_stack", [{"open_retry_s": 60}], indirect=True)
async def test_a_call_waits_while_full_and_goes_live_when_a_slot_frees(edge_stack):
    held = await fill(edge_stack)
    client = EdgeClient(edge_stack.url, video=False)
    try:
        await client.connect()
        await wait_until(lambda: "waiting" in states(client), 30, "the call to wait for a slot")
        assert client.session_id not in edge_stack.core.sessions
        waits = [e for e in client.events if e.get("state") == "waiting"]
        assert "busy" in waits[0]["detail"]
        # Still full a few retries later: the call keeps waiting, it is not dropped.
        await wait_until(lambda: sum(s == "waiting" for s in states(client)) >= 3, 30, "more retries")
        assert not edge_stack.edge.sessions[client.session_id].closed
        await held[0].close()  # a slot frees (a new replica would do the same)
        await wait_until(
            lambda: client.session_id in edge_stack.core.sessions, 30, "the call to get the slot"
        )
        await wait_until(
            lambda: len(edge_stack.inputs[client.session_id]) >= 10, 30, "the call's media at the model"
        )
        assert "live" in states(client) and not [e for e in client.events if e.get("type") == "error"]
    finally:
        await client.close()
        for s in held[1:]:
            await s.close()


@pytest.mark.parametrize("edge_stack", [{"open_retry_s": 2.5}], indirect=True)
async def test_a_call_that_finds_no_slot_in_time_gets_the_over_capacity_error(edge_stack):
    held = await fill(edge_stack)
    client = EdgeClient(edge_stack.url, video=False)
    try:
        await client.connect()
        errors = lambda: [e for e in client.events if e.get("type") == "error"]  # noqa: E731
        await wait_until(lambda: errors(), 30, "the over-capacity error")
        assert errors()[0]["code"] == "ERROR_CODE_OVER_CAPACITY", errors()
        assert "waiting" in states(client)  # it did retry before giving up
        await wait_until(
            lambda: client.session_id not in edge_stack.edge.sessions, 30, "the edge to end the call"
        )
        assert client.session_id not in edge_stack.core.sessions
    finally:
        await client.close()
        for s in held:
            await s.close()
