"""Fuzzing the bus consumers with hypothesis against a real nats-server: random bytes and mutated
valid messages (DelegationRequest, ToolCall, timer JSON, BackgroundUpdate; tool-call arguments from
a JSON strategy with NaN, huge numbers, deep nesting and unpaired surrogates), with and without
headers, published into the real background service, tools worker and interaction bridge.

After each target's inputs: (a) the consumer still answers a valid message, (b) nothing is left to
be redelivered (the work queue is empty, the consumer has nothing pending), (c) every input that
could not be used was counted by code and dead-lettered or terminated, and none crashed a handler.

Examples per target: ``MICROTURN_FUZZ_EXAMPLES`` (tests/fuzzing.py; ``make fuzz`` raises it). With ``MICROTURN_FUZZ_REPORT=path`` each target adds
``{"target", "inputs", ...}`` to that JSON list. One nats-server and one set of services serve every
example of the module; they run on an event loop in a thread, so hypothesis drives plain functions.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hostile_helpers import metric, metric_by, rejected
from hypothesis import given
from hypothesis import strategies as st
from nats.js.errors import NotFoundError

from microturn.background import BackgroundService
from microturn.bus import Bus, DelegationClient, subjects
from microturn.bus.delegations import (
    CARD_BODY_CHARS,
    CARD_FIELD_NAME_CHARS,
    CARD_FIELD_VALUE_CHARS,
    CARD_FIELDS,
    CARD_TITLE_CHARS,
)
from microturn.config import (
    BackgroundSettings,
    BusSettings,
    NatsSettings,
    Settings,
    TelemetrySettings,
    ToolsSettings,
)
from microturn.interaction.bridge import DelegationBridge
from microturn.localrun.nats import NatsServer
from microturn.telemetry import setup_telemetry
from microturn.tools import ToolClient
from microturn.tools.service import ToolsService
from microturn.v1 import delegation_pb2, media_pb2, tools_pb2
from tests.fuzzing import EXAMPLES, FUZZ

CORPUS = Path(__file__).parents[1] / "background" / "corpus"
UPDATE_SESSION = "s-fuzz-updates"
CRASH_CODES = ("gave_up", "crash_loop", "handler_failed")

pytestmark = [
    pytest.mark.fuzz,
    pytest.mark.timeout(600),
    # The services run on another thread while hypothesis generates, and they use `random`
    # (nats-py's inbox ids): hypothesis sees the global state move and warns; nothing is wrong.
    pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning"),
]


# -- the services, on a loop of their own -------------------------------------------------------------
class LoopThread:
    """An event loop in a thread: the services live there across examples; tests submit coroutines."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzz-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout_s: float = 120.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass
class Env:
    loop: LoopThread
    settings: Settings
    bus: Bus
    client: DelegationClient
    tools: ToolsService
    background: BackgroundService
    bridge: DelegationBridge
    handed: list[delegation_pb2.BackgroundUpdate] = field(default_factory=list)
    ids: Iterator[int] = field(default_factory=itertools.count)

    def run(self, coro: Coroutine[Any, Any, Any], timeout_s: float = 120.0) -> Any:
        return self.loop.run(coro, timeout_s)

    def unique(self, prefix: str) -> str:
        return f"{prefix}-{next(self.ids)}"


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Iterator[Env]:
    setup_telemetry("tests", TelemetrySettings())  # the real OpenTelemetry -> Prometheus path
    server = NatsServer(store_dir=tmp_path_factory.mktemp("nats-fuzz")).start()
    settings = Settings(
        nats=NatsSettings(url=server.url),
        bus=BusSettings(
            storage="memory", ack_wait_s=2.0, max_attempts=2, retry_delay_s=0.05, shutdown_grace_s=1.0
        ),
        tools=ToolsSettings(
            grpc_enabled=False,
            knowledge_preload=False,
            project_docs_dir=CORPUS,
            knowledge_dir=None,
            timeout_ms={"knowledge_search": 60_000},  # the first search loads the model
        ),
        background=BackgroundSettings(tool_timeout_s=20.0, default_deadline_s=30.0),
    )
    loop = LoopThread()
    handed: list[delegation_pb2.BackgroundUpdate] = []
    acks: set[asyncio.Future[None]] = set()

    def sink(session_id: str, update: delegation_pb2.BackgroundUpdate, ack) -> None:
        handed.append(update)
        task = asyncio.ensure_future(ack())
        acks.add(task)
        task.add_done_callback(acks.discard)

    async def start() -> Env:
        tools, background = ToolsService(settings), BackgroundService(settings)
        await tools.start()
        await background.start()
        bus = await Bus.connect(server.url, settings.bus, name="fuzzer")
        bridge = DelegationBridge(settings, sink)
        bridge.start()
        assert await bridge.wait_connected(10)
        bridge.follow(UPDATE_SESSION)
        return Env(loop, settings, bus, DelegationClient(bus), tools, background, bridge, handed)

    e = loop.run(start())
    try:
        yield e
    finally:

        async def stop() -> None:
            await e.bridge.close()
            await e.bus.close()
            await e.background.stop()
            await e.tools.stop()

        loop.run(stop())
        loop.close()
        server.stop()


# -- strategies -----------------------------------------------------------------------------------
# Each message spoils a few of its fields (none, one or two, drawn per message) and keeps the rest
# right, so that whole messages often get past the first checks and reach the code behind them.
def spoiled(fields: list[str]) -> st.SearchStrategy[set[str]]:
    return st.lists(st.sampled_from(fields), max_size=2).map(set)


def pick(
    draw: st.DrawFn, bad: set[str], name: str, good: st.SearchStrategy[Any], odd: st.SearchStrategy[Any]
):
    return draw(odd if name in bad else good)


def any_text(max_size: int = 80) -> st.SearchStrategy[str]:
    """Text a protobuf string can hold (no unpaired surrogates), control characters included."""
    return st.text(st.characters(codec="utf-8"), max_size=max_size)


VALID_ID = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,20}", fullmatch=True)
BAD_ID = st.one_of(st.just(""), any_text(40), st.text("ab.*> ", min_size=1, max_size=5), st.just("x" * 200))
NOW_MS = int(time.time() * 1000)  # fixed at import: strategies must not depend on the clock
INT64 = st.integers(-(2**63), 2**63 - 1)
UINT64 = st.integers(0, 2**64 - 1)


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with a few bytes flipped, inserted, deleted, or cut off."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        at = draw(st.integers(0, max(len(out) - 1, 0)))
        if op == "flip" and out:
            out[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and out:
            del out[at : at + draw(st.integers(1, 8))]
        elif op == "truncate":
            del out[at:]
    return bytes(out)


def payloads(messages: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """A serialised message (half the time), random bytes, or a mutation of a message."""
    ways = {"clean": messages, "raw": st.binary(max_size=512), "mutated": messages.flatmap(mutated)}
    return st.sampled_from(["clean", "clean", "raw", "mutated"]).flatmap(ways.__getitem__)


HEADERS = st.one_of(
    st.none(),
    st.just({}),
    st.fixed_dictionaries(
        {"traceparent": st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=80)}
    ),
    st.fixed_dictionaries({"X-Junk": st.text("abc ;:=", max_size=20)}),
)

GOOD_REQUESTS = st.one_of(
    st.sampled_from(
        [
            "what is 12 times (3 plus 4)?",
            "what time is it in Tokyo?",
            "what's the date?",
            "remind me in 10 minutes to stretch",
            "set a timer for " + "9" * 400 + " seconds",
            "show me a card about green tea",
            "how does dMel quantise audio?",
            "what is round(1, -10**300)",
            "what is 9**9**9",
            "sing me a song",
            "",
        ]
    ),
    any_text(200),
)
ODD_REQUESTS = st.one_of(
    st.integers(1, 2000).map(lambda n: "show " * n),  # past the request limit from n = 801
    st.integers(1, 300).map(lambda n: "remind me in " + "a " * n),
    st.integers(4001, 6000).map(lambda n: "x" * n),
)


@st.composite
def delegation_requests(draw: st.DrawFn) -> bytes:
    bad = draw(spoiled(["delegation_id", "session_id", "request", "context", "deadline", "utterances"]))
    utterance = st.builds(
        delegation_pb2.Utterance,
        speaker=st.integers(0, 7),
        text=st.integers(0, 20_000).map(lambda n: "show " * n) if "utterances" in bad else any_text(100),
        start_unix_ms=INT64,
        end_unix_ms=INT64,
        typed=st.booleans(),
    )
    req = delegation_pb2.DelegationRequest(
        delegation_id=pick(draw, bad, "delegation_id", VALID_ID, BAD_ID),
        session_id=pick(draw, bad, "session_id", st.sampled_from(["s-fuzz-a", "s-fuzz-b"]), BAD_ID),
        chunk_index=draw(UINT64),
        context=delegation_pb2.ContextPackage(
            utterances=draw(st.lists(utterance, max_size=3)),
            request=pick(draw, bad, "request", GOOD_REQUESTS, ODD_REQUESTS),
            timezone=pick(
                draw, bad, "context", st.sampled_from(["", "Europe/Paris", "Mars/Olympus"]), any_text(100)
            ),
            language=pick(draw, bad, "context", st.sampled_from(["", "en", "fr"]), any_text(100)),
        ),
        deadline_unix_ms=pick(draw, bad, "deadline", st.sampled_from([0, NOW_MS + 600_000]), INT64),
        sent_unix_us=draw(INT64),
    )
    return req.SerializeToString()


def json_values() -> st.SearchStrategy[Any]:
    """JSON with what parsers trip on: NaN and infinities, big and negative numbers, unpaired
    surrogates (a legal ``\\ud800`` escape), nesting."""
    text = st.one_of(any_text(60), st.text(st.characters(categories=["Cs"]), min_size=1, max_size=3))
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(-(10**30), 10**30),
        text,
    )
    return st.recursive(
        scalars,
        lambda kids: st.one_of(st.lists(kids, max_size=4), st.dictionaries(text, kids, max_size=4)),
        max_leaves=20,
    )


EXPRESSIONS = st.recursive(
    st.one_of(
        st.integers(-(10**6), 10**6).map(str), st.sampled_from(["pi", "e", "1e308", "0", "x", "__import__"])
    ),
    lambda kids: st.one_of(
        st.tuples(kids, st.sampled_from(["+", "-", "*", "/", "//", "%", "**", "^"]), kids).map(" ".join),
        st.tuples(
            st.sampled_from(["sqrt", "round", "factorial", "log", "max", "hypot", "open"]),
            st.lists(kids, max_size=3),
        ).map(lambda t: f"{t[0]}({', '.join(t[1])})"),
        kids.map(lambda k: f"-({k})"),
    ),
    max_leaves=12,
)

SHAPED_ARGUMENTS = {
    "calculator": st.fixed_dictionaries({"expression": EXPRESSIONS}),
    "clock": st.fixed_dictionaries(
        {},
        optional={
            "timezone": st.one_of(st.sampled_from(["UTC", "Tokyo", "Asia/Kolkata", "../etc"]), any_text(70))
        },
    ),
    "timer": st.fixed_dictionaries(
        {"seconds": st.one_of(st.integers(-5, 10**6), st.just(5.0), st.floats(allow_nan=True))},
        optional={"label": st.one_of(any_text(220), st.just("\ud800"))},
    ),
    "ui_card": st.fixed_dictionaries(
        {"title": st.one_of(any_text(130), st.just("\udc00"))},
        optional={
            "body": any_text(300),
            "fields": st.dictionaries(any_text(50), any_text(50), max_size=14),
            "card_id": st.one_of(VALID_ID, any_text(70)),
        },
    ),
    "knowledge_search": st.fixed_dictionaries(
        {"query": any_text(60)}, optional={"top_k": st.one_of(st.integers(-1, 12), st.just(2.0))}
    ),
}


@st.composite
def arguments(draw: st.DrawFn, tool: str, spoil: bool) -> str:
    """A tool's arguments: shaped for it (to reach the tool itself) unless spoilt, then anything."""
    if not spoil:
        return json.dumps(draw(SHAPED_ARGUMENTS.get(tool, st.just({}))))
    text = json.dumps(draw(json_values()))  # NaN/Infinity literals and \\ud800 escapes, as sent
    odd = st.one_of(
        st.just(text),
        st.integers(1, 4000).map(lambda n: "[" * n + "]" * n),
        st.integers(1, 4000).map(lambda n: '{"a":' * n + "1" + "}" * n),
        any_text(40),
        st.just(text).flatmap(_mangle),
    )
    return draw(odd)


@st.composite
def _mangle(draw: st.DrawFn, text: str) -> str:
    return draw(mutated(text.encode())).decode("utf-8", "replace")


TOOLS = ["calculator", "clock", "timer", "ui_card", "knowledge_search"]


@st.composite
def tool_calls(draw: st.DrawFn) -> tools_pb2.ToolCall:
    bad = draw(spoiled(["call_id", "tool", "schema", "arguments", "deadline", "session_id", "delegation_id"]))
    tool = pick(draw, bad, "tool", st.sampled_from(TOOLS), any_text(20))
    return tools_pb2.ToolCall(
        call_id=pick(draw, bad, "call_id", VALID_ID, BAD_ID),
        tool=tool,
        schema=pick(draw, bad, "schema", st.just(f"{tool}.v1"), any_text(20)),
        arguments_json=draw(arguments(tool, "arguments" in bad)),
        deadline_unix_ms=pick(draw, bad, "deadline", st.sampled_from([0, NOW_MS + 600_000]), INT64),
        session_id=pick(draw, bad, "session_id", st.sampled_from(["", "s-fuzz-tools"]), BAD_ID),
        delegation_id=pick(draw, bad, "delegation_id", st.one_of(st.just(""), VALID_ID), BAD_ID),
    )


@st.composite
def updates(draw: st.DrawFn) -> bytes:
    bad = draw(spoiled(["delegation_id", "session_id", "kind", "size"]))
    u = delegation_pb2.BackgroundUpdate(
        delegation_id=pick(draw, bad, "delegation_id", VALID_ID, BAD_ID),
        session_id=pick(draw, bad, "session_id", st.just(UPDATE_SESSION), BAD_ID),
        seq=draw(UINT64),
        sent_unix_us=draw(INT64),
    )
    kinds = ["partial", "final", "error", "ui_card"]
    kind = pick(draw, bad, "kind", st.sampled_from(kinds), st.sampled_from(["none", *kinds]))
    text = pick(draw, bad, "size", any_text(100), st.integers(0, 9000).map(lambda n: "é" * n))
    if kind in ("partial", "final"):
        getattr(u, kind).text = text
    elif kind == "error":
        u.error.CopyFrom(delegation_pb2.DelegationError(code=draw(st.integers(-5, 100)), message=text))
    elif kind == "ui_card":
        big = "size" in bad
        u.ui_card.CopyFrom(
            media_pb2.UiCard(
                card_id=draw(any_text(100 if big else 20)),
                title=draw(any_text(300 if big else 60)),
                body=text,
                fields=draw(
                    st.dictionaries(
                        any_text(60 if big else 20), any_text(300 if big else 60), max_size=16 if big else 5
                    )
                ),
            )
        )
    return u.SerializeToString()


def parses_as(cls, data: bytes):
    msg = cls()
    try:
        msg.ParseFromString(data)
    except Exception:
        return None
    return msg


async def publish(env: Env, subject: str, data: bytes, headers: dict[str, str] | None) -> int:
    """Straight into JetStream, as any publisher could (no message id: nothing is de-duplicated);
    the stream sequence it got."""
    return (await env.bus.js.publish(subject, data, headers=headers)).seq


async def settled(env: Env, stream: str, durable: str, timeout_s: float = 60.0) -> None:
    """The work queue is empty and its consumer holds nothing: nothing will be redelivered."""
    deadline = time.monotonic() + timeout_s
    while True:
        info = await env.bus.js.stream_info(stream)
        consumer = await env.bus.js.consumer_info(stream, durable)
        if info.state.messages == 0 and consumer.num_ack_pending == 0 and consumer.num_pending == 0:
            return
        assert time.monotonic() < deadline, (
            f"{stream}: {info.state.messages} messages, {consumer.num_ack_pending} unacked, "
            f"{consumer.num_pending} pending after {timeout_s}s"
        )
        await asyncio.sleep(0.1)


def backlog_timeout(tally) -> float:
    """How long a consumer may take to work off a target's inputs (a generous 0.2 s each)."""
    return 60.0 + 0.2 * max(tally.inputs, EXAMPLES)


def dead_count(env: Env, kind: str) -> int:
    async def count() -> int:
        info = await env.bus.js.stream_info(subjects.DEAD_STREAM, subjects_filter=subjects.dead_subject(kind))
        return (info.state.subjects or {}).get(subjects.dead_subject(kind), 0)

    return env.run(count())


def counted(value: Callable[[], float], expected: float, timeout_s: float = 10.0) -> float:
    """``value()`` once it reaches ``expected`` (or after ``timeout_s``): a consumer counts a refusal
    once the message is settled, a moment after its dead letter is visible."""
    deadline = time.monotonic() + timeout_s
    while (v := value()) < expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return v


def crashes(kind: str) -> float:
    return sum(rejected(kind, code) for code in CRASH_CODES)


# -- targets -------------------------------------------------------------------------------------
def test_fuzz_delegation_consumer(env: Env, tally: dict[str, Any]) -> None:
    before = {
        "dead": dead_count(env, "delegation"),
        "rejected": rejected("delegations"),
        "crash": crashes("delegations"),
    }
    outcomes = metric_by("microturn_delegations_total", "outcome")
    unusable = 0

    @FUZZ
    @given(data=payloads(delegation_requests()), headers=HEADERS)
    def run(data: bytes, headers: dict[str, str] | None) -> None:
        nonlocal unusable
        req = parses_as(delegation_pb2.DelegationRequest, data)
        if req is None or not (subjects.is_id(req.delegation_id) and subjects.is_id(req.session_id)):
            unusable += 1
        env.run(publish(env, subjects.DELEGATION_REQUEST, data, headers))
        tally.inputs += 1
        assert not env.background.queue._loop_task.done(), "the delegation consumer's loop ended"

    run()
    # (b) first: the inputs are published faster than the service works them off (thousands in a
    # long run), so a probe sent at once would wait behind all of them
    env.run(settled(env, subjects.DELEGATIONS_STREAM, subjects.BACKGROUND_CONSUMER, backlog_timeout(tally)))
    got = env.run(probe_delegation(env, "what is 6 times 7"))
    assert got.WhichOneof("kind") == "final" and got.final.text.endswith("42"), got  # (a)
    dead = dead_count(env, "delegation") - before["dead"]
    assert dead == unusable, f"{unusable} unusable inputs, {dead} dead-lettered"  # (c)
    assert counted(lambda: rejected("delegations") - before["rejected"], dead) >= dead
    assert crashes("delegations") == before["crash"], "an input crashed the handler"
    ended = {
        k: v - outcomes.get(k, 0) for k, v in metric_by("microturn_delegations_total", "outcome").items()
    }
    tally.outcomes = {"dead-lettered": dead, **{k: int(v) for k, v in ended.items() if v}}
    assert not ended.get("DELEGATION_ERROR_CODE_INTERNAL"), "a delegation ended INTERNAL"


async def probe_delegation(env: Env, text: str) -> delegation_pb2.BackgroundUpdate:
    """Ask a valid question on a fresh session; its last update."""
    sid = env.unique("s-probe")
    updates = await env.client.session_updates(sid)
    try:
        req = delegation_pb2.DelegationRequest(
            delegation_id=env.unique("d-probe"),
            session_id=sid,
            context=delegation_pb2.ContextPackage(request=text),
        )
        await env.client.delegate(req)
        while True:
            delivery = await updates.next(timeout_s=60)
            assert delivery is not None, "no answer to a valid delegation after the fuzz inputs"
            await delivery.ack()
            if delivery.is_last:
                return delivery.update
    finally:
        await updates.close()


def test_fuzz_tool_worker(env: Env, tally: dict[str, Any]) -> None:
    # Tool calls of earlier delegations may still be queued (their caller stopped waiting): let them
    # finish first, so that what is counted below is this target's.
    env.run(settled(env, subjects.DELEGATIONS_STREAM, subjects.BACKGROUND_CONSUMER, backlog_timeout(tally)))
    env.run(settled(env, subjects.TOOL_CALLS_STREAM, subjects.TOOLS_CONSUMER, backlog_timeout(tally)))
    before = {
        "dead": dead_count(env, "tool"),
        "rejected": rejected("tool_calls"),
        "crash": crashes("tool_calls"),
    }
    answered_before = metric("microturn_tool_calls_total", via="nats")
    unusable, answered = 0, []

    @FUZZ
    @given(call=tool_calls(), mutate=st.one_of(st.none(), st.none(), st.binary(max_size=8)), headers=HEADERS)
    def run(call: tools_pb2.ToolCall, mutate: bytes | None, headers: dict[str, str] | None) -> None:
        nonlocal unusable
        if subjects.is_id(call.call_id):
            call.call_id = env.unique(call.call_id[:20])  # one result subject per input
        data = call.SerializeToString()
        if mutate is not None:  # a cheap mutation: junk appended or spliced in
            data = data[: len(data) // 2] + mutate + data[len(data) // 2 :] if mutate else data[:-1]
        parsed = parses_as(tools_pb2.ToolCall, data)
        if parsed is None or not subjects.is_id(parsed.call_id):
            unusable += 1
        else:
            answered.append(parsed.call_id)
        env.run(publish(env, subjects.TOOL_CALL, data, headers))
        tally.inputs += 1
        assert not env.tools.worker.calls._loop_task.done(), "the tool-call consumer's loop ended"

    run()
    env.run(settled(env, subjects.TOOL_CALLS_STREAM, subjects.TOOLS_CONSUMER, backlog_timeout(tally)))
    client = ToolClient(env.bus, timeout_s=30)
    ok = env.run(
        client.call("calculator", {"expression": "6*7"}, schema="calculator.v1", call_id=env.unique("probe"))
    )
    assert ok.WhichOneof("outcome") == "result_json" and json.loads(ok.result_json)["value"] == 42  # (a)
    env.run(settled(env, subjects.TOOL_CALLS_STREAM, subjects.TOOLS_CONSUMER))  # (b)
    dead = dead_count(env, "tool") - before["dead"]
    assert dead == unusable, f"{unusable} unusable inputs, {dead} dead-lettered"  # (c)
    assert counted(lambda: rejected("tool_calls") - before["rejected"], dead) >= dead
    assert crashes("tool_calls") == before["crash"], "an input crashed the handler"

    async def results() -> list[tools_pb2.ToolResult]:
        out = []
        for call_id in answered:
            stored = await env.bus.last_message(
                subjects.TOOL_RESULTS_STREAM, subjects.tool_result_subject(call_id)
            )
            assert stored is not None, f"call {call_id} was never answered"
            out.append(tools_pb2.ToolResult.FromString(stored.data))
        return out

    tally.outcomes["dead-lettered"] = dead
    for result in env.run(results()):  # every usable call answered, none by a crash in a tool
        assert result.WhichOneof("outcome") in ("result_json", "error")
        assert "internal error" not in result.error.message, result
        key = (
            "ok"
            if result.WhichOneof("outcome") == "result_json"
            else tools_pb2.ToolErrorCode.Name(result.error.code)
        )
        tally.outcomes[key] = tally.outcomes.get(key, 0) + 1
    assert metric("microturn_tool_calls_total", via="nats") - answered_before == len(answered) + 1


@st.composite
def timers(draw: st.DrawFn) -> bytes:
    """Timers that are due now or never could be: none is left waiting once it has been seen."""
    bad = draw(spoiled(["timer_id", "session_id", "seconds", "fires_unix_ms", "label"]))
    timer = {
        "timer_id": pick(draw, bad, "timer_id", VALID_ID, BAD_ID),
        "session_id": pick(draw, bad, "session_id", st.just("s-fuzz-timers"), BAD_ID),
        "delegation_id": draw(st.one_of(VALID_ID, json_values())),
        "seconds": pick(
            draw,
            bad,
            "seconds",
            st.one_of(st.integers(1, 86_400), st.just(60.0)),
            st.one_of(st.integers(-5, 10**7), st.floats(allow_nan=True), any_text(5), st.none()),
        ),
        "fires_unix_ms": pick(
            draw,
            bad,
            "fires_unix_ms",
            st.integers(0, NOW_MS),
            st.one_of(
                st.integers(NOW_MS + 10**9, 2**70),
                st.integers(-(2**70), -1),
                st.floats(allow_nan=True),
                any_text(5),
            ),
        ),
        "label": pick(draw, bad, "label", any_text(200), st.one_of(json_values(), st.just("x" * 201))),
    }
    if "label" in bad and draw(st.booleans()):
        del timer["label"]
    return json.dumps(timer).encode()


def test_fuzz_timer_queue(env: Env, tally: dict[str, Any]) -> None:
    before = {"dead": dead_count(env, "timer"), "rejected": rejected("timers"), "crash": crashes("timers")}
    fired_before = metric("microturn_timers_fired_total")
    seqs: list[int] = []

    @FUZZ
    @given(data=payloads(timers()), headers=HEADERS)
    def run(data: bytes, headers: dict[str, str] | None) -> None:
        seqs.append(env.run(publish(env, subjects.timer_subject("s-fuzz-timers"), data, headers)))
        tally.inputs += 1
        assert not env.tools.worker.timers._loop_task.done(), "the timer consumer's loop ended"

    run()
    now_ms = int(time.time() * 1000)
    probe = {
        "timer_id": "probe",
        "session_id": "s-timer-probe",
        "label": "x",
        "seconds": 5,
        "fires_unix_ms": now_ms,
    }

    async def fired() -> delegation_pb2.BackgroundUpdate:
        updates = await env.client.session_updates("s-timer-probe")
        try:
            await publish(env, subjects.timer_subject("s-timer-probe"), json.dumps(probe).encode(), None)
            delivery = await updates.next(timeout_s=60)
            assert delivery is not None, "a due timer did not fire after the fuzz inputs"
            await delivery.ack()
            return delivery.update
        finally:
            await updates.close()

    assert "timer for x is done" in env.run(fired()).final.text  # (a)

    async def gone() -> None:  # (b): each input fired or was dead-lettered; none waits to come back
        deadline = time.monotonic() + 60
        for seq in seqs:
            while True:
                try:
                    await env.bus.js.get_msg(subjects.TIMERS_STREAM, seq)
                except NotFoundError:
                    break
                assert time.monotonic() < deadline, f"timer #{seq} is still queued after 60s"
                await asyncio.sleep(0.1)

    env.run(gone())
    dead = dead_count(env, "timer") - before["dead"]
    fired_n = metric("microturn_timers_fired_total") - fired_before - 1
    # (c) Timers set by earlier targets' tool calls may fire meanwhile, hence >=.
    assert dead <= len(seqs) and fired_n >= len(seqs) - dead, (
        f"{len(seqs)} timers: {dead} dead, {fired_n} fired"
    )
    assert counted(lambda: rejected("timers") - before["rejected"], dead) == dead
    tally.outcomes = {"dead-lettered": dead, "fired": int(fired_n)}
    assert crashes("timers") == before["crash"], "an input crashed the handler"


def test_fuzz_session_update_subscriber(env: Env, tally: dict[str, Any]) -> None:
    limit = env.settings.bus.max_update_text_bytes
    before = rejected("updates")
    truncated = rejected("updates", "truncated")
    undecodable = 0
    handler_failed = rejected("updates", "handler_failed")
    env.handed.clear()

    @FUZZ
    @given(data=payloads(updates()), headers=HEADERS)
    def run(data: bytes, headers: dict[str, str] | None) -> None:
        nonlocal undecodable
        if parses_as(delegation_pb2.BackgroundUpdate, data) is None:
            undecodable += 1
        env.run(publish(env, subjects.update_subject(UPDATE_SESSION), data, headers))
        tally.inputs += 1
        assert not env.bridge._followers[UPDATE_SESSION].done(), "the update follower ended"

    run()
    probe = delegation_pb2.BackgroundUpdate(
        delegation_id=env.unique("d-probe"),
        session_id=UPDATE_SESSION,
        seq=1,
        final=delegation_pb2.FinalResult(text="probe"),
    )

    async def arrived() -> None:
        await publish(env, subjects.update_subject(UPDATE_SESSION), probe.SerializeToString(), None)
        deadline = time.monotonic() + 60
        while not any(u.delegation_id == probe.delegation_id for u in env.handed):
            assert time.monotonic() < deadline, "a valid update did not reach the sink after the fuzz inputs"
            await asyncio.sleep(0.05)

    env.run(arrived())  # (a)

    async def drained() -> None:
        deadline = time.monotonic() + 60
        while True:
            info = await env.bus.js.consumer_info(subjects.UPDATES_STREAM, f"session-{UPDATE_SESSION}")
            if info.num_ack_pending == 0 and info.num_pending == 0:
                return
            assert time.monotonic() < deadline, f"{info.num_ack_pending} updates unacked after 60s"
            await asyncio.sleep(0.1)

    env.run(drained())  # (b): every input acked or terminated, none held for redelivery
    refused = rejected("updates") - before - (rejected("updates", "truncated") - truncated)
    assert refused >= undecodable  # (c)
    cut = rejected("updates", "truncated") - truncated
    tally.outcomes = {"handed out": len(env.handed) - 1, "refused": int(refused), "cut": int(cut)}
    assert rejected("updates", "handler_failed") == handler_failed
    for u in env.handed:  # what reached the replica is usable and bounded
        assert subjects.is_id(u.delegation_id) and u.session_id == UPDATE_SESSION
        kind = u.WhichOneof("kind")
        assert kind is not None
        if kind in ("partial", "final"):
            assert len(getattr(u, kind).text.encode()) <= limit
        elif kind == "error":
            assert len(u.error.message.encode()) <= limit
        else:
            card = u.ui_card
            assert len(card.title) <= CARD_TITLE_CHARS and len(card.body) <= CARD_BODY_CHARS
            assert len(card.fields) <= CARD_FIELDS
            assert all(
                len(k) <= CARD_FIELD_NAME_CHARS and len(v) <= CARD_FIELD_VALUE_CHARS
                for k, v in card.fields.items()
            )
