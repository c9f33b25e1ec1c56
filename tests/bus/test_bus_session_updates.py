"""The interaction side of the bus: delegations de-duplicated by id, a session's updates handed out
once each, redelivered when not acked (also to a new reader after a replica restart), and
cancellations kept for late readers."""

from __future__ import annotations

import pytest

from microturn.bus import Bus, DelegationClient, subjects
from microturn.config import BusSettings
from microturn.v1 import delegation_pb2

SETTINGS = BusSettings(ack_wait_s=1.0, max_attempts=3, retry_delay_s=0.05)


def update(seq: int, delegation_id: str = "d1", session_id: str = "s1", final: bool = False):
    u = delegation_pb2.BackgroundUpdate(delegation_id=delegation_id, session_id=session_id, seq=seq)
    if final:
        u.final.text = "done"
    else:
        u.partial.text = f"part {seq} "
    return u


async def publish(bus: Bus, u: delegation_pb2.BackgroundUpdate) -> None:
    await bus.publish(subjects.update_subject(u.session_id), u, msg_id=f"{u.delegation_id}:{u.seq}")


@pytest.fixture
async def bus(nats_server):
    bus = await Bus.connect(nats_server.url, SETTINGS)
    yield bus
    await bus.close()


async def test_delegate_is_deduplicated_by_delegation_id(bus):
    client = DelegationClient(bus)
    req = delegation_pb2.DelegationRequest(delegation_id="d-1", session_id="s-1")
    assert await client.delegate(req) is True
    assert await client.delegate(req) is False
    info = await bus.js.stream_info(subjects.DELEGATIONS_STREAM)
    assert info.state.messages == 1
    with pytest.raises(subjects.InvalidIdError):
        await client.delegate(delegation_pb2.DelegationRequest(delegation_id="d 2", session_id="s-1"))


async def test_updates_are_handed_out_once_in_order(bus):
    client = DelegationClient(bus)
    updates = await client.session_updates("s1")
    try:
        for seq in (1, 2, 3):
            await publish(bus, update(seq, final=seq == 3))
        # A re-run publishing the same updates after the de-duplication window would be dropped
        # by the reader as well: simulate it with new message ids.
        await bus.publish(subjects.update_subject("s1"), update(2), msg_id="other-id")
        got = []
        while (d := await updates.next(timeout_s=1.0)) is not None:
            got.append(d)
            await d.ack()
        assert [d.update.seq for d in got] == [1, 2, 3]
        assert [d.is_last for d in got] == [False, False, True]
    finally:
        await updates.close()


async def test_unacked_update_is_redelivered_even_to_a_new_reader(bus):
    client = DelegationClient(bus)
    first = await client.session_updates("s2")
    await publish(bus, update(1, session_id="s2"))
    d = await first.next(timeout_s=5)
    assert d is not None and d.update.seq == 1
    await first.close(delete=False)  # replica died before feeding it to the model: no ack

    second = await client.session_updates("s2")  # the replica that takes the session over
    try:
        again = await second.next(timeout_s=10)
        assert again is not None and again.update.seq == 1
        assert again.msg.metadata.num_delivered == 2
        await again.ack()
        assert await second.next(timeout_s=1.5) is None  # acked: not delivered a third time
    finally:
        await second.close()
    with pytest.raises(Exception):  # noqa: B017 (nats raises NotFoundError)
        await bus.js.consumer_info(subjects.UPDATES_STREAM, "session-s2")


async def test_cancellations_are_kept_for_late_readers(bus):
    client = DelegationClient(bus)
    await client.cancel("s3", "d9")
    await client.cancel("s3", reason=delegation_pb2.CANCEL_REASON_SESSION_CLOSED)
    one = await bus.last_message(subjects.CANCELS_STREAM, subjects.cancel_subject("s3", "d9"))
    whole = await bus.last_message(subjects.CANCELS_STREAM, subjects.cancel_subject("s3"))
    assert delegation_pb2.CancelDelegation.FromString(one.data).delegation_id == "d9"
    assert (
        delegation_pb2.CancelDelegation.FromString(whole.data).reason
        == delegation_pb2.CANCEL_REASON_SESSION_CLOSED
    )
    assert await bus.last_message(subjects.CANCELS_STREAM, subjects.cancel_subject("s4")) is None


async def test_update_held_past_ack_wait_is_not_handed_out_twice(bus):
    """A replica may hold an update until its next tick; redelivery must not duplicate or lose it."""
    import asyncio

    client = DelegationClient(bus)
    updates = await client.session_updates("s5")
    try:
        await publish(bus, update(1, session_id="s5"))
        held = await updates.next(timeout_s=5)
        assert held is not None
        assert await updates.next(timeout_s=SETTINGS.ack_wait_s * 2.5) is None  # redelivered, absorbed
        assert held.msg.metadata.num_delivered >= 2
        await held.ack()
        await asyncio.sleep(SETTINGS.ack_wait_s * 1.5)
        info = await bus.js.consumer_info(subjects.UPDATES_STREAM, "session-s5")
        assert info.num_ack_pending == 0  # the ack reached the newest delivery
    finally:
        await updates.close()
