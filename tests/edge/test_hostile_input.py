"""Regression tests for hostile client input at the edge: a bad data-channel message or a bad
offer gets a typed error with a reason (never a 500, never the end of the call), frees what it
took, and is counted and logged without flooding the logs."""

from __future__ import annotations

import asyncio
import json
import logging
import re

import httpx
import pytest
from aiortc import RTCPeerConnection
from aiortc.exceptions import OperationError
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from microturn.edge.app import create_app
from microturn.edge.peer import EdgeSession
from microturn.localrun.ports import free_port

from .conftest import edge_settings, wait_until
from .webrtc_client import EdgeClient, ToneTrack

NESTED_MESSAGE = "[" * 2000 + "]" * 2000  # 4000 bytes: under max_datachannel_bytes, over the recursion limit
SURROGATE_MESSAGE = '{"type": "text", "text": "\\ud800"}'  # valid JSON, text that is not valid Unicode


class FakeChannel:
    """An open "events" data channel that records what the edge sends."""

    readyState = "open"

    def __init__(self) -> None:
        self.sent: list[dict] = []

    def send(self, data: str) -> None:
        self.sent.append(json.loads(data))


def session_with_channel(**edge: object) -> tuple[EdgeSession, FakeChannel]:
    session = EdgeSession("s-test", edge_settings(free_port(), **edge), None)  # type: ignore[arg-type]
    channel = FakeChannel()
    session.channel_out = channel
    return session, channel


# -- data channel ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "reason", "edge"),
    [
        (NESTED_MESSAGE, "nested", {}),
        (SURROGATE_MESSAGE, "Unicode", {}),
        ('{"type": "text", "text": "a\\udfffb"}', "Unicode", {}),
        # a 5000-digit int is a ValueError, but not a JSONDecodeError
        ("1" * 5000, "not JSON", {"max_datachannel_bytes": 8192}),
        ("[" * 10 + "]" * 10, "nested", {"max_json_depth": 8}),
    ],
)
async def test_bad_message_is_an_error_event_not_an_exception(raw: str, reason: str, edge: dict):
    session, channel = session_with_channel(**edge)
    session._on_message(raw)
    assert [e["code"] for e in channel.sent] == ["BAD_MESSAGE"]
    assert reason in channel.sent[0]["message"], channel.sent[0]
    assert session.typed == [] and not session.closed


async def test_any_failure_in_parsing_is_a_bad_message(monkeypatch):
    """Not only the edge's own error types: whatever the parser raises stays in the handler."""

    def broken(*_: object, **__: object) -> str:
        raise KeyError("something nobody expected")

    monkeypatch.setattr("microturn.edge.peer.parse_client_message", broken)
    session, channel = session_with_channel()
    session._on_message('{"type": "text", "text": "hi"}')
    assert [e["code"] for e in channel.sent] == ["BAD_MESSAGE"]
    assert "something nobody expected" not in channel.sent[0]["message"]  # no internals to the client
    assert not session.closed


async def test_typed_text_over_the_chunk_budget_is_refused():
    """The replica refuses a whole chunk (audio too) whose typed text is over the per-chunk budget,
    so the edge must not put more than that into one chunk."""
    session, channel = session_with_channel()
    budget = session.limits.max_text_bytes_per_chunk
    text = "x" * (budget // 2 + 1)
    session._on_message(json.dumps({"type": "text", "text": text}))
    session._on_message(json.dumps({"type": "text", "text": text}))
    assert session.typed == [text]
    assert [e["code"] for e in channel.sent] == ["BAD_MESSAGE"]
    assert "per chunk" in channel.sent[0]["message"]
    session.typed = []  # the chunk was cut: the next message fits again
    session._on_message(json.dumps({"type": "text", "text": text}))
    assert session.typed == [text] and len(channel.sent) == 1


async def test_hostile_messages_do_not_end_the_call(edge_stack):
    client = EdgeClient(edge_stack.url, video=False)
    await client.connect()
    sid = client.session_id

    def outputs() -> list[int]:
        return [e["chunk"] for e in client.events if e["type"] == "chunk"]

    await wait_until(lambda: len(outputs()) >= 2, 30, "2 output chunks")
    session = edge_stack.edge.sessions[sid]
    budget = edge_stack.edge.settings.limits.max_text_bytes_per_chunk
    for raw in (NESTED_MESSAGE, SURROGATE_MESSAGE, b"\x00\xff"):
        client.channel.send(raw)
    client.send_text("a" * (budget - 10))
    client.send_text("b" * (budget - 10))  # together over one chunk's budget

    def bad() -> list[dict]:
        return [e for e in client.events if e["type"] == "error" and e["code"] == "BAD_MESSAGE"]

    await wait_until(lambda: len(bad()) >= 4, 20, "four BAD_MESSAGE errors")
    client.send_text("still here")

    def sent_text() -> list[str]:
        assert session.grpc is not None
        return [t.text for c in session.grpc.window.values() for t in c.text]

    await wait_until(lambda: "still here" in sent_text(), 20, "the text on its way to the model")
    n = len(outputs())
    await wait_until(lambda: len(outputs()) >= n + 3, 20, "more output chunks")
    assert session.state == "live" and not session.closed and sid in edge_stack.edge.sessions
    assert client.pc.connectionState == "connected"
    assert outputs() == list(range(len(outputs())))
    # the replica took every chunk: no INVALID_CHUNK for the text over the budget, nothing else
    assert not [e for e in client.events if e["type"] == "error" and e["code"] != "BAD_MESSAGE"]
    await client.close()


# -- offers ----------------------------------------------------------------------------------------
async def real_offer() -> str:
    """An audio + data-channel offer from a real aiortc peer connection (candidates on 127.0.0.1)."""
    pc = RTCPeerConnection()
    pc.addTrack(ToneTrack())
    pc.createDataChannel("events")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


async def new_session(http: httpx.AsyncClient) -> tuple[str, dict[str, str]]:
    r = await http.post("/api/sessions")
    assert r.status_code == 201, r.text
    return r.json()["session_id"], {"Authorization": f"Bearer {r.json()['token']}"}


def move_fingerprint_to_session_level(sdp: str) -> str:
    lines = sdp.split("\r\n")
    fingerprint = next(line for line in lines if line.startswith("a=fingerprint:"))
    lines = [line for line in lines if not line.startswith("a=fingerprint:")]
    first_media = next(i for i, line in enumerate(lines) if line.startswith("m="))
    return "\r\n".join([*lines[:first_media], fingerprint, *lines[first_media:]])


async def test_bad_offers_are_400_before_aiortc_sees_them(edge_stack):
    sdp = await real_offer()
    no_codec = re.sub(r"(?m)^a=rtpmap:(\d+) [^/\r\n]+/", r"a=rtpmap:\1 x-unknown/", sdp)
    no_fingerprint = "\r\n".join(line for line in sdp.split("\r\n") if not line.startswith("a=fingerprint"))
    md5_only = re.sub(r"(?m)^a=fingerprint:\S+ ", "a=fingerprint:md5 ", sdp)
    no_setup = "\r\n".join(line for line in sdp.split("\r\n") if not line.startswith("a=setup"))
    cases = [
        ({"sdp": no_codec, "type": "offer"}, "codec"),
        ({"sdp": no_fingerprint, "type": "offer"}, "fingerprint"),
        ({"sdp": md5_only, "type": "offer"}, "fingerprint"),
        ({"sdp": no_setup, "type": "offer"}, "a=setup"),
    ]
    async with httpx.AsyncClient(base_url=edge_stack.url, timeout=20) as http:
        sid, auth = await new_session(http)
        for body, reason in cases:
            r = await http.post(f"/api/sessions/{sid}/offer", json=body, headers=auth)
            assert r.status_code == 400, (reason, r.text)
            assert reason in r.json()["detail"], r.json()
            assert edge_stack.edge.sessions[sid].pc is None  # aiortc never saw it
        nested = ("[" * 3000 + "]" * 3000).encode()
        r = await http.post(
            f"/api/sessions/{sid}/offer", content=nested, headers={**auth, "Content-Type": "application/json"}
        )
        assert r.status_code == 400 and "nested" in r.json()["detail"], r.text
        # the session is not poisoned: a good offer (fingerprint at session level) still works
        good = move_fingerprint_to_session_level(sdp)
        r = await http.post(f"/api/sessions/{sid}/offer", json={"sdp": good, "type": "offer"}, headers=auth)
        assert r.status_code == 200 and r.json()["type"] == "answer", r.text
        await http.delete(f"/api/sessions/{sid}", headers=auth)


async def test_negotiation_failure_is_400_and_releases_the_session(edge_stack, monkeypatch):
    """Whatever aiortc raises while answering is the offer's fault: a 400 with the reason, the
    peer connection closed at once and the session gone (not left for the reaper)."""
    sdp = await real_offer()
    created: list[RTCPeerConnection] = []

    async def failing_answer(self: RTCPeerConnection):
        created.append(self)
        raise OperationError("Failed to set remote audio description send parameters")

    monkeypatch.setattr(RTCPeerConnection, "createAnswer", failing_answer)
    async with httpx.AsyncClient(base_url=edge_stack.url, timeout=20) as http:
        sid, auth = await new_session(http)
        r = await http.post(f"/api/sessions/{sid}/offer", json={"sdp": sdp, "type": "offer"}, headers=auth)
        assert r.status_code == 400, r.text
        assert "could not be negotiated" in r.json()["detail"]
        assert "send parameters" in r.json()["detail"]
        assert sid not in edge_stack.edge.sessions
        assert created and created[0].connectionState == "closed"


async def test_concurrent_offers_do_not_leak_a_peer_connection(edge_stack):
    """Two offers racing for one session: one is answered, the other is a 409, not a second
    peer connection that replaces (and leaks) the first."""
    sdp = await real_offer()
    async with httpx.AsyncClient(base_url=edge_stack.url, timeout=20) as http:
        sid, auth = await new_session(http)
        url, body = f"/api/sessions/{sid}/offer", {"sdp": sdp, "type": "offer"}
        answers = await asyncio.gather(*(http.post(url, json=body, headers=auth) for _ in range(2)))
        assert sorted(r.status_code for r in answers) == [200, 409], [r.text for r in answers]
        assert all("detail" in r.json() for r in answers if r.status_code == 409)
        await http.delete(f"/api/sessions/{sid}", headers=auth)


# -- counting and logging --------------------------------------------------------------------------
def client_error_counts(reader: InMemoryMetricReader) -> dict[tuple[tuple[str, object], ...], int]:
    counts: dict[tuple[tuple[str, object], ...], int] = {}
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == "microturn_edge_client_errors":
                    for point in metric.data.data_points:
                        counts[tuple(sorted(point.attributes.items()))] = point.value
    return counts


async def test_client_errors_are_counted_by_code_and_logged_rate_limited(caplog):
    reader = InMemoryMetricReader()
    settings = edge_settings(free_port(), client_error_log_interval_s=60)
    app = create_app(settings, meter_provider=MeterProvider(metric_readers=[reader]))
    transport = httpx.ASGITransport(app=app)
    caplog.set_level(logging.INFO, logger="microturn.edge")
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://e") as http,
    ):
        sid, auth = await new_session(http)
        for _ in range(5):
            r = await http.post(f"/api/sessions/{sid}/offer", json={"sdp": "v=0"}, headers=auth)
            assert r.status_code == 400
        r = await http.post(f"/api/sessions/{sid}/offer", json={"sdp": "v=0"})
        assert r.status_code == 401
        session = app.state.edge.sessions[sid]
        session.channel_out = FakeChannel()
        for _ in range(3):
            session._on_message(b"binary")
    assert client_error_counts(reader) == {
        (("code", "HTTP_400"),): 5,
        (("code", "HTTP_401"),): 1,
        (("code", "BAD_MESSAGE"),): 3,
    }
    lines = [r.getMessage() for r in caplog.records if "client error" in r.getMessage()]
    assert len(lines) == 3, lines  # one per code in the interval, not one per error


async def test_client_error_log_says_how_many_it_suppressed(caplog):
    from microturn.edge.events import ClientErrors

    now = [100.0]
    provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    errors = ClientErrors(provider.get_meter("test"), log_interval_s=10, clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="microturn.edge")
    for _ in range(5):
        errors.report("BAD_MESSAGE", "messages must be JSON text\nnot binary")
    now[0] += 11
    errors.report("BAD_MESSAGE", "not JSON")
    lines = [r.getMessage() for r in caplog.records if "client error" in r.getMessage()]
    assert len(lines) == 2, lines
    assert "4 more" in lines[1] and "\n" not in lines[0]
