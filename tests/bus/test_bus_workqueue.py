"""Work-queue semantics against a real nats-server: shared work, de-duplication, dead letters."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from microturn.bus import Bus, Durable, PermanentError, WorkQueue, ensure_streams, subjects
from microturn.bus.connection import DEAD_DELIVERIES, DEAD_REASON
from microturn.config import BusSettings

SETTINGS = BusSettings(ack_wait_s=1.0, max_attempts=3, retry_delay_s=0.05, shutdown_grace_s=2.0)


async def read_dead(bus: Bus, kind: str, count: int, timeout_s: float = 20.0):
    sub = await bus.js.subscribe(
        subjects.dead_subject(kind), stream=subjects.DEAD_STREAM, ordered_consumer=True
    )
    try:
        return [await sub.next_msg(timeout=timeout_s) for _ in range(count)]
    finally:
        await sub.unsubscribe()


def queue(bus: Bus, handler, concurrency: int = 4) -> WorkQueue:
    return WorkQueue(
        bus,
        consumer=Durable(subjects.TOOL_CALLS_STREAM, "test-workers", subjects.TOOL_CALL),
        kind="test",
        handler=handler,
        concurrency=concurrency,
    )


async def test_streams_are_created_idempotently_and_updated(nats_server):
    bus = await Bus.connect(nats_server.url, SETTINGS)
    try:
        await ensure_streams(bus.js, SETTINGS)  # second time: no error
        changed = SETTINGS.model_copy(update={"updates_max_age_s": 60.0})
        await ensure_streams(bus.js, changed)
        info = await bus.js.stream_info(subjects.UPDATES_STREAM)
        assert info.config.max_age == 60.0
        names = {s.config.name for s in await bus.js.streams_info()}
        assert {subjects.DELEGATIONS_STREAM, subjects.TOOL_CALLS_STREAM, subjects.DEAD_STREAM} <= names
    finally:
        await bus.close()


async def test_two_consumers_share_work_without_duplicates(nats_server):
    buses = [await Bus.connect(nats_server.url, SETTINGS) for _ in range(2)]
    done: list[Counter[bytes]] = [Counter(), Counter()]
    finished = asyncio.Event()
    n = 40

    def handler_for(i: int):
        async def handle(msg, attempt):
            await asyncio.sleep(0.01)
            done[i][msg.data] += 1
            if sum(c.total() for c in done) == n:
                finished.set()

        return handle

    queues = [queue(bus, handler_for(i)) for i, bus in enumerate(buses)]
    try:
        for q in queues:
            await q.start()
        for k in range(n):
            await buses[0].publish(subjects.TOOL_CALL, f"job-{k}".encode(), msg_id=f"job-{k}")
        await asyncio.wait_for(finished.wait(), 30)
        total = done[0] + done[1]
        assert set(total) == {f"job-{k}".encode() for k in range(n)}
        assert max(total.values()) == 1, "a job was done twice"
        assert done[0].total() > 0 and done[1].total() > 0, "one instance got no work"
    finally:
        for q in queues:
            await q.stop()
        for bus in buses:
            await bus.close()


async def test_message_id_deduplicates(nats_server):
    bus = await Bus.connect(nats_server.url, SETTINGS)
    try:
        first = await bus.publish(subjects.TOOL_CALL, b"x", msg_id="same")
        again = await bus.publish(subjects.TOOL_CALL, b"x", msg_id="same")
        assert not first.duplicate and again.duplicate
        info = await bus.js.stream_info(subjects.TOOL_CALLS_STREAM)
        assert info.state.messages == 1
    finally:
        await bus.close()


async def test_poison_message_is_dead_lettered_after_max_attempts(nats_server):
    bus = await Bus.connect(nats_server.url, SETTINGS)
    attempts: list[int] = []

    async def always_fails(msg, attempt):
        attempts.append(attempt.number)
        raise RuntimeError("boom")

    q = queue(bus, always_fails)
    try:
        await q.start()
        await bus.publish(subjects.TOOL_CALL, b"poison", msg_id="poison-1")
        [dead] = await read_dead(bus, "test", 1)
        assert dead.data == b"poison"
        assert dead.headers[DEAD_DELIVERIES] == str(SETTINGS.max_attempts)
        assert "boom" in dead.headers[DEAD_REASON]
        assert attempts == list(range(1, SETTINGS.max_attempts + 1))
        # Acked right after dead-lettering: gone from the work queue.
        for _ in range(100):
            info = await bus.js.stream_info(subjects.TOOL_CALLS_STREAM)
            if info.state.messages == 0:
                break
            await asyncio.sleep(0.05)
        assert info.state.messages == 0
    finally:
        await q.stop()
        await bus.close()


async def test_permanent_error_is_dead_lettered_at_once(nats_server):
    bus = await Bus.connect(nats_server.url, SETTINGS)
    calls = 0

    async def undecodable(msg, attempt):
        nonlocal calls
        calls += 1
        raise PermanentError("not a ToolCall")

    q = queue(bus, undecodable)
    try:
        await q.start()
        await bus.publish(subjects.TOOL_CALL, b"\xff\xff", msg_id="bad-1")
        [dead] = await read_dead(bus, "test", 1)
        assert dead.headers[DEAD_DELIVERIES] == "1"
        assert "not a ToolCall" in dead.headers[DEAD_REASON]
        assert calls == 1
    finally:
        await q.stop()
        await bus.close()


async def test_unacked_work_is_redelivered_to_the_other_instance(nats_server):
    """An instance that stops heart-beating (here: its connection dies) loses the message to another."""
    a = await Bus.connect(nats_server.url, SETTINGS)
    b = await Bus.connect(nats_server.url, SETTINGS)
    got_a = asyncio.Event()
    got_b: list[int] = []

    async def hang(msg, attempt):
        got_a.set()
        await asyncio.sleep(3600)

    async def work(msg, attempt):
        got_b.append(attempt.number)

    qa = queue(a, hang)
    qb = queue(b, work)
    try:
        await qa.start()
        await a.publish(subjects.TOOL_CALL, b"job", msg_id="job")
        await asyncio.wait_for(got_a.wait(), 10)
        await a.nc.close()  # no heartbeat, no nak: like a crash
        await qb.start()
        for _ in range(200):
            if got_b:
                break
            await asyncio.sleep(0.05)
        assert got_b == [2]
    finally:
        await qb.stop()
        for t in list(qa._tasks):
            t.cancel()
        if qa._loop_task:
            qa._loop_task.cancel()
        await b.close()


def test_ids_that_are_not_subject_tokens_are_refused():
    for bad in ["a.b", "a*", ">", "", "has space", "_session", "x" * 200]:
        with pytest.raises(subjects.InvalidIdError):
            subjects.update_subject(bad)
    assert subjects.cancel_subject("s1") == "mt.cancel.s1._session"
    assert subjects.cancel_subject("s1", "d-1") == "mt.cancel.s1.d-1"


async def test_message_that_crashes_every_worker_is_dead_lettered(nats_server):
    """Delivered once more than max_attempts without ever being settled: dead-lettered unprocessed."""
    settings = SETTINGS.model_copy(update={"max_attempts": 1})
    crashed = await Bus.connect(nats_server.url, settings)
    survivor = await Bus.connect(nats_server.url, settings)
    got = asyncio.Event()
    handled: list[int] = []

    async def hang(msg, attempt):
        got.set()
        await asyncio.sleep(3600)

    async def work(msg, attempt):
        handled.append(attempt.number)

    def make(bus, handler):
        return WorkQueue(
            bus,
            consumer=Durable(subjects.TOOL_CALLS_STREAM, "crashy", subjects.TOOL_CALL, max_attempts=1),
            kind="test",
            handler=handler,
            concurrency=1,
        )

    qa, qb = make(crashed, hang), make(survivor, work)
    try:
        await qa.start()
        await crashed.publish(subjects.TOOL_CALL, b"crash me", msg_id="crash")
        await asyncio.wait_for(got.wait(), 10)
        await crashed.nc.close()
        await qb.start()
        [dead] = await read_dead(survivor, "test", 1)
        assert dead.data == b"crash me" and dead.headers[DEAD_DELIVERIES] == "2"
        assert "without an ack" in dead.headers[DEAD_REASON]
        assert handled == []
    finally:
        await qb.stop()
        for t in list(qa._tasks):
            t.cancel()
        if qa._loop_task:
            qa._loop_task.cancel()
        await survivor.close()
