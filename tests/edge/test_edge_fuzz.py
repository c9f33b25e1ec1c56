"""Fuzzing the edge's client-facing input with hypothesis, through the real FastAPI app and the real
data-channel handler: offer bodies and SDP are never answered with a 5xx and always with a JSON
reason, never leave a peer connection behind, and no data-channel message ends the call.

Examples per target: ``MICROTURN_FUZZ_EXAMPLES`` (see tests/fuzzing.py, all targets together in seconds on
two cores; ``make fuzz`` raises it; the real-call target runs half as many). Each target writes how
many inputs it ran to the terminal and, with ``MICROTURN_FUZZ_REPORT=path``, appends
``{target, inputs, seconds, examples}`` to that JSON list.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from aiortc import RTCPeerConnection
from fastapi import FastAPI
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from microturn.edge.app import create_app
from microturn.edge.events import ClientErrors
from microturn.edge.peer import EdgeSession
from microturn.localrun.ports import free_port

from ..fuzzing import EXAMPLES, FUZZ, Tally
from .conftest import edge_settings, wait_until
from .test_hostile_input import FakeChannel
from .webrtc_client import EdgeClient, PatternTrack, ToneTrack

pytestmark = pytest.mark.fuzz


# -- the app -----------------------------------------------------------------------------------------
@dataclass
class App:
    app: FastAPI
    http: httpx.AsyncClient
    offer_lines: list[str]

    @property
    def sessions(self) -> dict[str, EdgeSession]:
        return self.app.state.edge.sessions


async def real_offer() -> str:
    """Audio, video and data channel from a real aiortc peer connection: every section to mutate."""
    pc = RTCPeerConnection()
    pc.addTrack(ToneTrack())
    pc.addTrack(PatternTrack())
    pc.createDataChannel("events")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


@pytest.fixture
async def edge_app() -> AsyncIterator[App]:
    """The real app with its lifespan, over ASGI (no sockets); no interaction service is needed
    to answer offers. 5xx come back as responses, not exceptions, so the test can see them."""
    app = create_app(
        edge_settings(free_port(), max_sessions=10_000),
        meter_provider=MeterProvider(metric_readers=[InMemoryMetricReader()]),
    )
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://edge", timeout=30) as http,
    ):
        yield App(app, http, (await real_offer()).split("\r\n"))


async def post_offer(edge: App, content: bytes) -> httpx.Response:
    """One fresh session, one offer; checks the invariants every answer must keep, then closes
    the session."""
    r = await edge.http.post("/api/sessions")
    assert r.status_code == 201, r.text
    sid, token = r.json()["session_id"], r.json()["token"]
    session = edge.sessions[sid]
    auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    r = await edge.http.post(f"/api/sessions/{sid}/offer", content=content, headers=auth)
    assert r.status_code < 500, (r.status_code, r.text[:300], content[:300])
    body = r.json()  # always JSON
    if r.status_code == 200:
        assert body["type"] == "answer" and body["sdp"].startswith("v=0")
        assert session.pc is not None and sid in edge.sessions
    else:
        assert 400 <= r.status_code < 500
        assert isinstance(body.get("detail"), str) and body["detail"], body
        # no peer connection left behind: none was made, or it is closed and the session gone
        if session.pc is not None:
            assert session.pc.connectionState == "closed" and sid not in edge.sessions
    if sid in edge.sessions:
        d = await edge.http.delete(f"/api/sessions/{sid}", headers=auth)
        assert d.status_code == 204
    if session.pc is not None:
        assert session.pc.connectionState == "closed"
    return r


# -- (a) offer bodies --------------------------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=40,
)
offer_like = st.fixed_dictionaries(
    {
        "sdp": st.text(max_size=200) | json_values,
        "type": st.sampled_from(["offer", "answer", ""]) | json_values,
    }
)
nested = st.builds(
    lambda depth, opener, inner: (opener * depth + inner).encode(),
    st.integers(1, 20_000),
    st.sampled_from(["[", "{", '{"sdp":', '{"a":[', '[{"sdp":"v=0",', "[" * 3 + "{"]),
    st.sampled_from(["", "1", '"x"', "]" * 50, "}" * 50, "null"]),
)
raw_bodies = (
    st.binary(max_size=400)
    | nested
    | st.text(max_size=200).map(str.encode)
    | offer_like.map(lambda v: json.dumps(v).encode())
    | json_values.map(lambda v: json.dumps(v).encode())
    | st.binary(min_size=1, max_size=40).map(
        lambda b: json.dumps({"sdp": "v=0", "type": "offer"}).encode() + b
    )
)


@FUZZ
@given(body=raw_bodies)
async def test_fuzz_offer_bodies(edge_app: App, tally: Tally, body: bytes):
    r = await post_offer(edge_app, body)
    tally.saw(r.status_code)


# -- (b) SDP -----------------------------------------------------------------------------------------
ATTRIBUTES = [
    "fingerprint", "setup", "rtpmap", "fmtp", "rtcp-fb", "candidate", "end-of-candidates", "ice-ufrag",
    "ice-pwd", "ice-options", "ice-lite", "mid", "group", "msid", "msid-semantic", "extmap", "ssrc",
    "ssrc-group", "rtcp", "rtcp-mux", "sctp-port", "sctpmap", "max-message-size", "sendrecv", "recvonly",
    "sendonly", "inactive",
]  # fmt: skip
VALUES = [
    "", "0", "-1", "65536", "99999999999999999999", "sha-256", "md5 00:11", "sha-256 AB:CD", "actpass", "active",
    "passive", "holdconn", "bogus", "BUNDLE 0 1 2", "BUNDLE", "BUNDLE 7", "111 opus/48000/2", "111 opus",
    "111 x/y/z", "96 VP8/90000", "97 rtx/90000", "97 apt=96", "102 H264/90000",
    "102 packetization-mode=x;profile-level-id=zz", "x", "1 1 udp 1 127.0.0.1 9 typ host",
    "1 1 udp 1 ::1 99999 typ host", "1 1 udp 1 foo.local 5000 typ host", "1 1 tcp 1 127.0.0.1 9 typ srflx raddr",
    "1 cname:x", "x y:z", "1 urn:ietf:params:rtp-hdrext:sdes:mid", "1/sendrecv foo", "9 IN IP4 0.0.0.0",
    "\u00e9\u20ac\U0001f600", "a" * 300,
]  # fmt: skip
MEDIA_LINES = [
    "m=audio 9 UDP/TLS/RTP/SAVPF 111", "m=audio 9 UDP/TLS/RTP/SAVPF", "m=audio x UDP/TLS/RTP/SAVPF 0",
    "m=audio 9 UDP/TLS/RTP/SAVPF 300", "m=video 9 UDP/TLS/RTP/SAVPF 96 97", "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
    "m=application 9 DTLS/SCTP 5000", "m=application 9 DTLS/SCTP x", "m=text 9 RTP/AVP 0", "m=message 9 TCP/MSRP *",
]  # fmt: skip


def sdp_line(base: list[str]) -> st.SearchStrategy[str]:
    attribute = st.builds(
        lambda name, value, colon: f"a={name}{':' if colon else ''}{value}",
        st.sampled_from(ATTRIBUTES) | st.text(max_size=12),
        st.sampled_from(VALUES) | st.text(max_size=40),
        st.booleans(),
    )
    session_line = st.builds(
        lambda k, v: f"{k}={v}", st.sampled_from(list("vosctbcmi")), st.text(max_size=30)
    )
    return (
        attribute | st.sampled_from(MEDIA_LINES) | session_line | st.sampled_from(base) | st.text(max_size=60)
    )


@st.composite
def mutated_sdp(draw: st.DrawFn, base: list[str]) -> str:
    lines = list(base)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["delete", "duplicate", "replace", "insert", "edit", "swap"]))
        if not lines:
            op = "insert"
        i = draw(st.integers(0, max(0, len(lines) - 1)))
        if op == "delete":
            del lines[i]
        elif op == "duplicate":
            lines.insert(draw(st.integers(0, len(lines))), lines[i])
        elif op == "replace":
            lines[i] = draw(sdp_line(base))
        elif op == "insert":
            lines.insert(draw(st.integers(0, len(lines))), draw(sdp_line(base)))
        elif op == "edit":
            line = lines[i]
            a = draw(st.integers(0, len(line)))
            b = draw(st.integers(a, len(line)))
            lines[i] = line[:a] + draw(st.text(max_size=12)) + line[b:]
        else:
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
    return draw(st.sampled_from(["\r\n", "\n"])).join(lines)


@FUZZ
@given(data=st.data())
async def test_fuzz_offer_sdp(edge_app: App, tally: Tally, data: st.DataObject):
    sdp = data.draw(mutated_sdp(edge_app.offer_lines), label="sdp")
    r = await post_offer(edge_app, json.dumps({"sdp": sdp, "type": "offer"}).encode())
    tally.saw(r.status_code)


async def test_unmutated_offer_is_answered(edge_app: App):
    """The fuzzer's base offer itself is good, so its mutations test the checks, not a bad seed."""
    r = await post_offer(
        edge_app, json.dumps({"sdp": "\r\n".join(edge_app.offer_lines), "type": "offer"}).encode()
    )
    assert r.status_code == 200, r.text


# -- (c) data-channel messages -----------------------------------------------------------------------
SETTINGS = edge_settings(free_port(), max_datachannel_bytes=8192)  # room for >4300-digit numbers
ERRORS = ClientErrors(MeterProvider(shutdown_on_exit=False).get_meter("fuzz"), log_interval_s=60)
valid_text = st.text(min_size=1, max_size=200).filter(lambda t: bool(t.strip()))
valid_messages = st.builds(
    lambda text, ascii_only, extra: json.dumps(
        {"type": "text", "text": text, **extra}, ensure_ascii=ascii_only
    ),
    valid_text,
    st.booleans(),
    st.dictionaries(st.sampled_from(["id", "ts", "x"]), st.integers() | st.text(max_size=5), max_size=2),
)
# only high surrogates, or one low one: never a pair, which JSON decodes to one valid character
lone_surrogates = st.text(
    st.characters(min_codepoint=0xD800, max_codepoint=0xDBFF), min_size=1, max_size=4
) | (st.characters(min_codepoint=0xDC00, max_codepoint=0xDFFF))
hostile_messages = (
    st.binary(max_size=300)
    | st.builds(
        lambda n, o: o * n, st.integers(9, 3000), st.sampled_from(["[", '{"a":', '{"type":"text","text":['])
    )
    | lone_surrogates.map(lambda s: json.dumps({"type": "text", "text": s}))
    | lone_surrogates.map(lambda s: json.dumps({"type": "text", "text": f"ok {s} ok"}))
    | st.builds(lambda n: '{"type":"text","text":' + "1" * n + "}", st.integers(1, 8000))
    | st.sampled_from(
        ["", " ", "null", "[]", '{"type":"text"}', '{"type":"text","text":"   "}', '{"type":"text","text":1}']
    )
    | st.integers(1025, 4000).map(lambda n: json.dumps({"type": "text", "text": "x" * n}))  # over the budget
)
any_messages = (
    st.tuples(st.just("valid"), valid_messages)
    | st.tuples(st.just("hostile"), hostile_messages)
    | st.tuples(st.just("any"), st.text(max_size=300) | json_values.map(json.dumps))
)


@FUZZ
@given(message=any_messages)
async def test_fuzz_datachannel_handler(tally: Tally, message: tuple[str, str | bytes]):
    """Arbitrary text and bytes through the real handler of an EdgeSession: a valid message is
    taken, a hostile one gets exactly one BAD_MESSAGE, nothing gets both or escapes."""
    kind, raw = message
    session = EdgeSession("s-fuzz", SETTINGS, None, client_errors=ERRORS)  # type: ignore[arg-type]
    channel = FakeChannel()
    session.channel_out = channel
    session._on_message(raw)
    errors = channel.sent
    assert all(e["type"] == "error" and e["code"] == "BAD_MESSAGE" and e["message"] for e in errors), errors
    assert len(errors) + len(session.typed) == 1, (raw, errors, session.typed)
    if session.typed:
        assert session.typed == [json.loads(raw)["text"]]
        session.typed[0].encode("utf-8")  # what goes on to protobuf is valid Unicode
    if kind == "valid":
        assert session.typed, (raw, errors)
    elif kind == "hostile":
        assert errors, raw
    assert not session.closed
    tally.saw(f"{kind}:{'taken' if session.typed else 'error'}")


PROBE = b"probe"  # binary: always exactly one BAD_MESSAGE, after whatever came before it
PROBE_REASON = "messages must be JSON text, not binary"


@pytest.fixture
async def live_call(edge_stack) -> AsyncIterator[tuple[EdgeClient, EdgeSession]]:
    client = EdgeClient(edge_stack.url, video=False)
    await client.connect()
    await wait_until(lambda: any(e.get("state") == "live" for e in client.events), 30, "the call to go live")
    yield client, edge_stack.edge.sessions[client.session_id]
    await client.close()


@settings(FUZZ, max_examples=max(10, EXAMPLES // 2))
@given(message=any_messages)
async def test_fuzz_datachannel_over_a_real_call(live_call, tally: Tally, message: tuple[str, str | bytes]):
    """The same messages over one real aiortc call to the full stack (edge and interaction core).
    Each is followed by a probe, so the edge is known to be done with it when the probe's error
    comes back. The call stays up throughout. (The replica's own errors — e.g. more typed text
    than the model's text-in queue holds — arrive on their own schedule and are only counted.)"""
    client, session = live_call
    kind, raw = message
    start = len(client.events)
    client.channel.send(raw)
    client.channel.send(PROBE)
    probes = 2 if isinstance(raw, bytes) else 1

    def bad() -> list[dict]:  # only the edge's message handler sends these, in message order
        return [e for e in client.events[start:] if e["type"] == "error" and e["code"] == "BAD_MESSAGE"]

    deadline = time.monotonic() + 10
    while sum(e["message"] == PROBE_REASON for e in bad()) < probes:  # polled finely: one wait per input
        assert time.monotonic() < deadline, f"no answer to the probe after {raw!r:.100}"
        await asyncio.sleep(0.002)
    for_raw = bad()[:-1]  # all but the probe's
    assert len(for_raw) <= 1, for_raw
    if kind == "valid":  # refused only when it does not fit in this chunk's typed-text budget
        assert not for_raw or "per chunk" in for_raw[0]["message"], (raw, for_raw)
    elif kind == "hostile":
        assert for_raw, raw
    assert not session.closed and session.state == "live"
    assert client.pc.connectionState == "connected" and client.channel.readyState == "open"
    replica = sum(e["type"] == "error" and e["code"] != "BAD_MESSAGE" for e in client.events[start:])
    tally.saw(f"{kind}:{'error' if for_raw else 'taken'}" + (" +replica error" if replica else ""))
