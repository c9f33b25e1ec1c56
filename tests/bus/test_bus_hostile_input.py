"""Hostile messages on the bus against a real nats-server: each gets a typed outcome (dead letter,
terminated, typed error), is counted by code, and leaves the consumer serving.

Each test here is a regression test of a defect the old code had; the docstrings say which."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from hostile_helpers import dead_letters, dead_seq, rejected, wait_until

from microturn.bus import Bus, DelegationClient, Durable, PayloadTooLarge, PermanentError, WorkQueue, subjects
from microturn.bus.connection import DEAD_DELIVERIES, DEAD_REASON, DEAD_SIZE, MSG_ID
from microturn.config import BusSettings, NatsSettings, Settings, ToolsSettings
from microturn.interaction.bridge import DelegationBridge
from microturn.tools import ToolClient, ToolExecutor, build_registry
from microturn.tools.worker import ToolWorker
from microturn.v1 import delegation_pb2, tools_pb2

SETTINGS = BusSettings(ack_wait_s=1.0, max_attempts=3, retry_delay_s=0.05, shutdown_grace_s=2.0)


@pytest.fixture
async def bus(nats_server):
    bus = await Bus.connect(nats_server.url, SETTINGS)
    yield bus
    await bus.close()


@pytest.fixture
async def tools_worker(bus, tmp_path):
    executor = ToolExecutor(build_registry(ToolsSettings(project_docs_dir=None, knowledge_dir=tmp_path)))
    worker = ToolWorker(bus, executor, 4)
    await worker.start()
    yield worker
    await worker.stop(0.5)


def update(session_id: str, delegation_id: str = "d1", seq: int = 1, text: str = "done"):
    return delegation_pb2.BackgroundUpdate(
        delegation_id=delegation_id,
        session_id=session_id,
        seq=seq,
        final=delegation_pb2.FinalResult(text=text),
    )


# -- size limits ------------------------------------------------------------------------------------
@pytest.mark.timeout(60)
async def test_message_at_the_size_limit_is_dead_lettered_and_the_connection_survives(nats_server, bus):
    """Old: the dead-letter copy of a message near bus.max_payload_bytes (its body plus the
    dead-letter headers) was over the server's max_payload, so the server closed the connection
    and nats-py gave it up for good: one message took the whole service off the bus."""
    handled: list[bytes] = []

    async def refuse_big(msg, attempt):
        handled.append(msg.data[:4])
        if len(msg.data) > 100:
            raise PermanentError("too big to work on")

    q = WorkQueue(
        bus,
        consumer=Durable(subjects.TOOL_CALLS_STREAM, "size-test", subjects.TOOL_CALL),
        kind="test",
        handler=refuse_big,
        concurrency=2,
    )
    reader = await Bus.connect(nats_server.url, SETTINGS, name="reader")
    try:
        await q.start()
        body = b"big!" + b"x" * (SETTINGS.max_payload_bytes - 200)
        await bus.publish(subjects.TOOL_CALL, body, msg_id="big")
        [dead] = await dead_letters(reader, "test", 1)
        assert dead.headers[DEAD_SIZE] == str(len(body))
        assert body.startswith(dead.data) and len(dead.data) < len(body)
        assert "too big to work on" in dead.headers[DEAD_REASON]
        await bus.publish(subjects.TOOL_CALL, b"next", msg_id="next")

        async def served() -> bool:
            return b"next" in handled

        await wait_until(served, what="the next message being handled")
        assert bus.nc.is_connected
    finally:
        await q.stop()
        await reader.close()


async def test_publish_over_the_limit_with_headers_is_refused_before_sending(bus):
    """Old: only the payload was checked, so payload plus headers over the server's max_payload
    went out and the server dropped the connection."""
    payload = b"x" * (SETTINGS.max_payload_bytes - 50)
    with pytest.raises(PayloadTooLarge):
        await bus.publish(subjects.TOOL_CALL, payload, headers={"X-Pad": "p" * 100})
    assert bus.nc.is_connected
    ack = await bus.publish(subjects.TOOL_CALL, b"small", msg_id="small")
    assert ack.seq > 0


# -- timers -------------------------------------------------------------------------------------------
def timer_json(**over) -> bytes:
    timer = {
        "timer_id": "t-1",
        "session_id": "s-timer",
        "delegation_id": "d-1",
        "label": "tea",
        "seconds": 60,
        "created_unix_ms": int(time.time() * 1000),
        "fires_unix_ms": int(time.time() * 1000) - 1,
    }
    timer.update(over)
    return json.dumps(timer).encode()


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("case", "data", "code"),
    [
        # Old: nak'ed with a delay past int64 nanoseconds, which the server does not take: the
        # timer came straight back, thousands of times a second, for ever.
        ("far future", timer_json(fires_unix_ms=2**62), "invalid_field"),
        # Old: due, then due_text() raised on it every time: retried for ever (timers have no
        # attempt limit).
        ("duration not a number", timer_json(seconds="soon"), "invalid_field"),
        # Old: the announcement could not be built (an unpaired surrogate is not protobuf text).
        ("label not text", timer_json(label="\ud800"), "invalid_field"),
        ("not an object", b"[1, 2, 3]", "undecodable"),
    ],
)
async def test_unusable_timer_is_dead_lettered_at_once(bus, tools_worker, case, data, code):
    before = rejected("timers", code)
    since = await dead_seq(bus)
    await bus.publish(subjects.timer_subject("s-timer"), data, msg_id=f"timer-{case}")
    [dead] = await dead_letters(bus, "timer", 1, timeout_s=10, since_seq=since)
    assert dead.data == data and dead.headers[DEAD_DELIVERIES] == "1"

    async def drained() -> bool:
        return (await bus.js.stream_info(subjects.TIMERS_STREAM)).state.messages == 0

    await wait_until(drained, what="the timer leaving the work queue")

    async def counted() -> bool:  # once the message is settled (acked after its dead letter)
        return rejected("timers", code) == before + 1

    await wait_until(counted, what="the refusal being counted")


# -- tool calls ---------------------------------------------------------------------------------------
@pytest.mark.timeout(60)
async def test_tool_call_whose_result_would_not_be_text_is_answered_with_a_typed_error(bus, tools_worker):
    """Old: ui_card echoed an unpaired surrogate (a legal JSON escape) into its result, building the
    ToolResult raised, the call was retried until dead-lettered and the caller only saw a timeout."""
    client = ToolClient(bus, timeout_s=10)
    result = await client.call(
        "ui_card", '{"title": "\\ud800"}', schema="ui_card.v1", call_id="c-surrogate", session_id="s-1"
    )
    assert result.WhichOneof("outcome") == "error"
    assert result.error.code == tools_pb2.TOOL_ERROR_CODE_INVALID_ARGUMENTS
    assert "surrogate" in result.error.message
    ok = await client.call("clock", {"timezone": "UTC"}, schema="clock.v1", call_id="c-after")
    assert ok.WhichOneof("outcome") == "result_json"


async def test_undecodable_tool_call_is_dead_lettered_and_counted(bus, tools_worker):
    before = rejected("tool_calls", "undecodable")
    since = await dead_seq(bus)
    await bus.publish(subjects.TOOL_CALL, b"\xff\xff\xff", msg_id="junk")
    [dead] = await dead_letters(bus, "tool", 1, since_seq=since)
    assert dead.headers[DEAD_DELIVERIES] == "1" and MSG_ID in dead.headers

    async def counted() -> bool:  # once the message is settled (acked after its dead letter)
        return rejected("tool_calls", "undecodable") == before + 1

    await wait_until(counted, what="the refusal being counted")


# -- a session's updates ------------------------------------------------------------------------------
async def test_update_text_over_the_limit_is_cut_before_it_is_handed_out(bus):
    """Old: a final of any length went to the model; the engine refuses text-in over its queue
    limit, and that failed the whole tick for every session on the replica (while the update, never
    acked, was redelivered for as long as the reader lived)."""
    limit = SETTINGS.max_update_text_bytes
    updates = await DelegationClient(bus).session_updates("s-long")
    try:
        before = rejected("updates", "truncated")
        await bus.publish(subjects.update_subject("s-long"), update("s-long", text="é" * 5000), msg_id="long")
        delivery = await updates.next(timeout_s=10)
        assert delivery is not None
        text = delivery.update.final.text
        assert len(text.encode()) <= limit and text.startswith("éé") and text.endswith("…")
        assert rejected("updates", "truncated") == before + 1
        await delivery.ack()
    finally:
        await updates.close()


async def test_unusable_updates_are_terminated_and_counted(bus):
    """Old: an update with a delegation id of any size (it travels on to the client and its replay
    window), for another session, or with no content was handed out like any other."""
    sid = "s-hostile"
    hostile = [
        (update(sid, delegation_id="x" * 5000), "invalid_id"),
        (update(sid, delegation_id=""), "invalid_id"),
        (update("someone-else"), "invalid_field"),
        (delegation_pb2.BackgroundUpdate(delegation_id="d1", session_id=sid, seq=2), "no_kind"),
    ]
    updates = await DelegationClient(bus).session_updates(sid)
    try:
        before = {code: rejected("updates", code) for _, code in hostile}
        undecodable = rejected("updates", "undecodable")
        for i, (u, _) in enumerate(hostile):
            await bus.publish(subjects.update_subject(sid), u, msg_id=f"bad-{i}")
        await bus.publish(subjects.update_subject(sid), b"\x0a\xff\xff", msg_id="junk")
        await bus.publish(subjects.update_subject(sid), update(sid, "d-ok", text="fine"), msg_id="good")
        delivery = await updates.next(timeout_s=10)
        assert delivery is not None and delivery.update.delegation_id == "d-ok"
        await delivery.ack()
        for code in set(before):
            assert rejected("updates", code) == before[code] + sum(1 for _, c in hostile if c == code)
        assert rejected("updates", "undecodable") == undecodable + 1

        async def nothing_left() -> bool:  # refused ones terminated, the good one acked: none comes back
            info = await bus.js.consumer_info(subjects.UPDATES_STREAM, f"session-{sid}")
            return info.num_ack_pending == 0 and info.num_pending == 0 and info.num_redelivered == 0

        await wait_until(nothing_left, what="every update settled")
    finally:
        await updates.close()


@pytest.mark.timeout(60)
async def test_bridge_keeps_following_when_its_sink_fails(nats_server, bus):
    """Old: an exception out of the sink (the replica's update handler) ended the follower task,
    and the session got no background update again."""
    got: list[str] = []
    acks: set[asyncio.Future[None]] = set()

    def sink(session_id, upd, ack) -> None:
        if upd.final.text == "boom":
            raise RuntimeError("sink failed")
        got.append(upd.final.text)
        task = asyncio.ensure_future(ack())
        acks.add(task)
        task.add_done_callback(acks.discard)

    settings = Settings(nats=NatsSettings(url=nats_server.url), bus=SETTINGS)
    bridge = DelegationBridge(settings, sink)
    bridge.start()
    try:
        assert await bridge.wait_connected(10)
        bridge.follow("s-sink")
        before = rejected("updates", "handler_failed")
        await bus.publish(subjects.update_subject("s-sink"), update("s-sink", "d-a", text="boom"), msg_id="a")
        await bus.publish(subjects.update_subject("s-sink"), update("s-sink", "d-b", text="fine"), msg_id="b")

        async def arrived() -> bool:
            return got == ["fine"]

        await wait_until(arrived, what="the update after the failing one reaching the sink")
        assert rejected("updates", "handler_failed") == before + 1
    finally:
        await bridge.close()
