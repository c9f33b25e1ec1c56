"""Delegation → tool calls → streamed updates → final, end to end through a real nats-server, for
every planner capability (services in-process; process-level behaviour is in test_resilience)."""

from __future__ import annotations

import zoneinfo
from datetime import datetime, timedelta

from background_helpers import collect, kinds, request

from microturn.v1 import delegation_pb2

ErrorCode = delegation_pb2.DelegationErrorCode


def assert_well_formed(updates) -> None:
    assert [u.seq for u in updates] == list(range(1, len(updates) + 1))
    assert kinds(updates)[-1] in ("final", "error")
    assert all(k not in ("final", "error") for k in kinds(updates)[:-1])


async def test_arithmetic(stack):
    updates = await stack.ask("What is 12 times (3 plus 4)?")
    assert_well_formed(updates)
    assert kinds(updates) == ["partial", "final"]
    assert updates[-1].final.text == "12 * (3 + 4) = 84"


async def test_time_in_a_city_and_date_in_the_user_zone(stack):
    updates = await stack.ask("what time is it in Tokyo?")
    assert_well_formed(updates)
    text = updates[-1].final.text
    now = datetime.now(zoneinfo.ZoneInfo("Asia/Tokyo"))
    assert "Asia/Tokyo" in text
    assert any(t.strftime("%H:%M") in text for t in (now, now - timedelta(minutes=1)))

    updates = await stack.ask("what's the date today?", timezone="Pacific/Kiritimati")
    today = datetime.now(zoneinfo.ZoneInfo("Pacific/Kiritimati"))
    assert any(d.strftime("%A") in updates[-1].final.text for d in (today, today - timedelta(minutes=1)))


async def test_timer_sets_a_card_then_fires_as_an_update(stack):
    session = "s-timer"
    updates = await stack.client.session_updates(session)
    try:
        req = request(session, "remind me in 2 seconds to stretch")
        await stack.client.delegate(req)
        got = await collect(updates, req.delegation_id)
        assert kinds(got) == ["ui_card", "final"]
        assert got[0].ui_card.fields["Duration"] == "2 seconds"
        assert "stretch" in got[-1].final.text
        fired = await updates.next(timeout_s=30)
        assert fired is not None and fired.update.delegation_id.startswith("timer-")
        assert "stretch" in fired.update.final.text and "done" in fired.update.final.text
        await fired.ack()
    finally:
        await updates.close()


async def test_knowledge_question_streams_the_passage(stack):
    updates = await stack.ask("How does dMel quantise the audio?")
    assert_well_formed(updates)
    assert kinds(updates)[0] == "partial" and kinds(updates)[-1] == "final"
    final = updates[-1].final.text
    assert "16 levels" in final and "dmel.md" in final
    streamed = "".join(u.partial.text for u in updates if u.WhichOneof("kind") == "partial")
    assert "16 levels" in streamed


async def test_ui_card_from_the_knowledge_base(stack):
    updates = await stack.ask("show me a card about green tea")
    assert_well_formed(updates)
    assert kinds(updates) == ["ui_card", "final"]
    card = updates[0].ui_card
    assert card.title == "green tea" and "80 degrees" in card.body and card.card_id


async def test_says_plainly_when_it_cannot_help(stack):
    updates = await stack.ask("book me a flight to Paris")
    assert kinds(updates) == ["error"]
    assert updates[0].error.code == ErrorCode.DELEGATION_ERROR_CODE_UNSUPPORTED
    assert "can't help" in updates[0].error.message


async def test_hostile_arithmetic_is_a_clear_error_and_service_keeps_serving(stack):
    updates = await stack.ask("what is 9**9**9")
    assert updates[-1].error.code == ErrorCode.DELEGATION_ERROR_CODE_TOOL_FAILED
    assert "exponent" in updates[-1].error.message
    updates = await stack.ask("calculate __import__('os')")
    assert updates[-1].WhichOneof("kind") == "error"
    updates = await stack.ask("what is 1 + 1")
    assert updates[-1].final.text == "1 + 1 = 2"


async def test_knowledge_miss_is_said_plainly(stack):
    updates = await stack.ask("who won the football world cup in 1930?")
    assert updates[-1].error.code == ErrorCode.DELEGATION_ERROR_CODE_UNSUPPORTED
    assert "couldn't find anything" in updates[-1].error.message
