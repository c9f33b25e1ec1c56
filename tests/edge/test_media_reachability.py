"""Media reachability (docs/EDGE.md): real calls to an edge whose host candidates are bound in a UDP
port range, whose answer advertises another address, or whose media goes through a real TURN relay
(Debian's coturn on loopback).

The port range is process-wide (aioice has no per-connection option), so the aiortc clients of these
tests, in the same process, bind in the range too: two ports each while they gather (one per section,
until the answer bundles them), one after."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import socket
import time
from pathlib import Path

import aioice.ice
import httpx
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCIceServer, RTCIceTransportPolicy, RTCPeerConnection

from microturn.edge import ice
from microturn.edge.ice import sdp_candidates

from .conftest import wait_until
from .turn_server import PASSWORD, USER, run_turnserver
from .webrtc_client import EdgeClient


def udp_ports_free(ports: range) -> bool:
    """Whether every port is free for UDP and TCP on 127.0.0.1 (coturn listens on both)."""
    for port in ports:
        for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
            with socket.socket(socket.AF_INET, kind) as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    return False
    return True


def free_port_block(size: int) -> range:
    """Consecutive free ports below the OS's ephemeral range (32768+), where nothing is handed out
    implicitly, so the block stays free between collection and the test."""
    rng = random.Random()
    for _ in range(200):
        start = rng.randrange(20_000, 32_000 - size)
        block = range(start, start + size)
        if udp_ports_free(block):
            return block
    raise RuntimeError(f"no block of {size} free ports in 20000-32000")


# chosen at collection, since the edge's settings are the fixture's parameter
RANGE = free_port_block(12)
TINY = free_port_block(3)
TURN_PORT = free_port_block(1)[0]
TURN_ICE_SERVER = {
    "urls": [f"turn:127.0.0.1:{TURN_PORT}?transport=udp"],
    "username": USER,
    "credential": PASSWORD,
}
ADVERTISED = "192.0.2.10"  # TEST-NET-1: never an address of this machine


@pytest.fixture(autouse=True)
def restore_aioice():
    yield
    ice.use_port_range(None, None)  # the next edge or client in this process binds as aioice does


@pytest.fixture(scope="module")
def turn(tmp_path_factory):
    with run_turnserver(Path(tmp_path_factory.mktemp("coturn")), TURN_PORT) as server:
        yield server


class Client(EdgeClient):
    """The test client without a camera, with its own RTCConfiguration if given (TURN, relay only)."""

    def __init__(self, base_url: str, configuration: RTCConfiguration | None = None) -> None:
        super().__init__(base_url, video=False)
        if configuration is not None:
            self.pc = RTCPeerConnection(configuration)  # replaces the unused default one


def record_answers(client: EdgeClient) -> list[str]:
    """The SDP answers the edge returns to this client, as sent (before aiortc re-serialises them)."""
    answers: list[str] = []

    async def hook(response: httpx.Response) -> None:
        if response.request.url.path.endswith("/offer") and response.status_code == 200:
            await response.aread()
            answers.append(response.json()["sdp"])

    client.http.event_hooks["response"].append(hook)
    return answers


def ice_connection(pc: RTCPeerConnection):
    """The aioice connection under a peer connection (one: everything is bundled)."""
    return pc.getTransceivers()[0].receiver.transport.transport.iceGatherer._connection


def nominated(pc: RTCPeerConnection):
    pairs = ice_connection(pc)._nominated
    assert pairs, "no nominated candidate pair"
    return pairs[1]


def rms(frames) -> float:
    pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype(np.float64)
    return float(np.sqrt(np.mean(pcm**2)))


async def model_audio_flows(stack, client: EdgeClient, seconds: float) -> None:
    """The mic reaches the model and the model's voice comes back, for this long of media."""
    sid = client.session_id
    chunks = int(seconds * 5)
    await wait_until(
        lambda: len(stack.inputs[sid]) >= chunks, 30 + 2 * seconds, f"{chunks} chunks at the model"
    )
    await wait_until(lambda: len(client.audio_frames) >= chunks * 10, 30, f"{chunks * 10} audio frames back")
    loud = [float(np.sqrt(np.mean(c.pcm.astype(np.float64) ** 2))) > 1000 for c in stack.inputs[sid][1:]]
    assert any(loud) and not all(loud), "the 1 s tone / 1 s silence mic did not reach the model"
    assert rms(client.audio_frames) > 0, "the audio back is all silence"
    assert any(e["type"] == "state" and e["state"] == "live" for e in client.events)


# -- UDP port range ------------------------------------------------------------------------------
@pytest.mark.parametrize("edge_stack", [{"ice_port_min": RANGE[0], "ice_port_max": RANGE[-1]}], indirect=True)
async def test_calls_use_ports_in_the_range(edge_stack):
    clients = [Client(edge_stack.url) for _ in range(2)]
    answers = [record_answers(c) for c in clients]
    try:
        for c in clients:  # the second call while the first is up
            await c.connect()
        edge_ports = []
        for c, [answer] in zip(clients, answers, strict=True):
            candidates = sdp_candidates(answer)
            assert candidates and all(kind == "host" for _, _, kind in candidates), candidates
            assert all(port in RANGE for _, port, _ in candidates), (candidates, RANGE)
            # what the edge really bound, not just what it wrote
            session = edge_stack.edge.sessions[c.session_id]
            bound = [p.transport.get_extra_info("sockname") for p in ice_connection(session.pc)._protocols]
            ports = {port for _, port, _ in candidates}  # each bundled section repeats them
            assert sorted(port for _, port in bound) == sorted(ports)
            edge_ports += ports
        assert len(set(edge_ports)) == len(edge_ports), "two calls share a port"
        for c in clients:
            await model_audio_flows(edge_stack, c, seconds=3)
        for c in clients:  # the selected path really uses an in-range edge port
            session = edge_stack.edge.sessions[c.session_id]
            assert nominated(session.pc).local_addr[1] in RANGE
    finally:
        for c in clients:
            await c.close()


@pytest.mark.parametrize("edge_stack", [{"ice_port_min": TINY[0], "ice_port_max": TINY[-1]}], indirect=True)
async def test_an_exhausted_range_refuses_the_call_clearly(edge_stack, caplog):
    caplog.set_level(logging.INFO, logger="microturn.edge")
    # the test holds one port of the three, the client takes the other two: none is left for the edge
    held = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    held.bind(("127.0.0.1", TINY[1]))
    first = Client(edge_stack.url)
    try:
        with pytest.raises(httpx.HTTPStatusError) as refused:
            await first.connect()
        response = refused.value.response
        assert response.status_code == 503 and response.headers["Retry-After"] == "5"
        assert "no ICE candidate" in response.json()["detail"]
        assert "ice_port_min" in response.json()["detail"]
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert any(f"{TINY[0]}-{TINY[-1]}" in m and "no free UDP port" in m for m in errors), errors
        assert first.session_id not in edge_stack.edge.sessions  # released, not left to the reaper
    finally:
        await first.close()
        held.close()
    # ports free again: the edge serves the next call
    second = Client(edge_stack.url)
    answers = record_answers(second)
    try:
        await second.connect()
        [port] = {port for _, port, _ in sdp_candidates(answers[0])}
        assert port in TINY
        await model_audio_flows(edge_stack, second, seconds=3)
        assert (await second.http.get("/healthz")).status_code == 200
    finally:
        await second.close()


def test_the_range_refuses_an_aioice_it_was_not_written_for(monkeypatch):
    """If aioice's gathering no longer makes exactly the one host bind, applying a range fails
    loudly instead of binding somewhere else."""

    async def changed(self, component: int, addresses: list[str], timeout: int = 5) -> list:
        loop = asyncio.get_running_loop()
        for address in addresses:
            await loop.create_datagram_endpoint(
                asyncio.DatagramProtocol, local_addr=(address, 0), reuse_port=True
            )
        await loop.getaddrinfo("stun.example", 3478)
        return []

    before = aioice.ice.Connection.get_component_candidates
    monkeypatch.setattr(ice, "_ORIGINAL_GATHER", changed)
    with pytest.raises(
        ice.IcePatchError, match=r"aioice 0\.13\.\d+ \(the ICE port range was written for 0\.13\.0\)"
    ):
        ice.use_port_range(RANGE[0], RANGE[-1])
    assert aioice.ice.Connection.get_component_candidates is before


# -- advertised address --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "edge_stack",
    [{"ice_advertised_address": ADVERTISED}],
    indirect=True,
)
async def test_the_answer_advertises_the_configured_address(edge_stack):
    client = Client(edge_stack.url)
    answers = record_answers(client)
    try:
        await client.connect()
        [answer] = answers
        local = ice_connection(edge_stack.edge.sessions[client.session_id].pc).local_candidates
    finally:
        await client.close()
    bound = [(c.host, c.port) for c in local]
    assert bound and all(host == "127.0.0.1" for host, _ in bound)
    # the same ports (in every bundled section), the advertised address, the bound one nowhere
    assert set(sdp_candidates(answer)) == {(ADVERTISED, port, "host") for _, port in bound}
    assert "127.0.0.1" not in answer
    c_lines = [line for line in answer.splitlines() if line.startswith("c=")]
    assert c_lines and all(line == f"c=IN IP4 {ADVERTISED}" for line in c_lines)


# -- TURN relay ----------------------------------------------------------------------------------
async def test_a_relay_only_client_calls_through_turn(edge_stack, turn):
    config = RTCConfiguration(
        iceServers=[RTCIceServer(**turn.ice_server())], iceTransportPolicy=RTCIceTransportPolicy.RELAY
    )
    client = Client(edge_stack.url, config)
    try:
        await client.connect()
        offered = sdp_candidates(client.pc.localDescription.sdp)
        assert offered and all(kind == "relay" for _, _, kind in offered), offered
        await model_audio_flows(edge_stack, client, seconds=10)
        # the client sends from its TURN allocation, and the edge talks to that relay address
        mine = nominated(client.pc)
        assert mine.local_candidate.type == "relay"
        relay_addr = (mine.local_candidate.host, mine.local_candidate.port)
        theirs = nominated(edge_stack.edge.sessions[client.session_id].pc)
        assert theirs.remote_candidate.type == "relay" and theirs.remote_addr == relay_addr
    finally:
        await client.close()


@pytest.mark.parametrize(
    "edge_stack",
    [
        {
            "ice_transport_policy": "relay",
            "ice_servers": [TURN_ICE_SERVER],
        }
    ],
    indirect=True,
)
async def test_a_relay_only_edge_calls_through_turn(turn, edge_stack):
    assert turn.ice_server() == TURN_ICE_SERVER
    client = Client(edge_stack.url)
    answers = record_answers(client)
    info = (await client.http.post("/api/sessions")).json()
    assert info["ice_servers"] == [TURN_ICE_SERVER]  # what a browser is given for its own side
    await client.http.delete(
        f"/api/sessions/{info['session_id']}", headers={"Authorization": f"Bearer {info['token']}"}
    )
    try:
        await client.connect()
        candidates = sdp_candidates(answers[0])
        assert candidates and all(kind == "relay" for _, _, kind in candidates), candidates
        await model_audio_flows(edge_stack, client, seconds=3)
        assert nominated(edge_stack.edge.sessions[client.session_id].pc).local_candidate.type == "relay"
    finally:
        await client.close()


# -- per-session TURN credentials (TURN REST API) ------------------------------------------------
SHARED_SECRET = "turn-rest-shared-secret"
REST_TURN_PORT = free_port_block(1)[0]
REST_TURN_URL = f"turn:127.0.0.1:{REST_TURN_PORT}?transport=udp"


@pytest.fixture(scope="module")
def rest_turn(tmp_path_factory):
    with run_turnserver(
        Path(tmp_path_factory.mktemp("coturn-rest")), REST_TURN_PORT, shared_secret=SHARED_SECRET
    ) as server:
        yield server


@pytest.mark.parametrize(
    "edge_stack",
    [
        {
            "ice_transport_policy": "relay",
            "ice_servers": [{"urls": [REST_TURN_URL]}],
            "turn_shared_secret": SHARED_SECRET,
            "turn_credential_ttl_s": 600,
        }
    ],
    indirect=True,
)
async def test_per_session_turn_credentials_carry_a_relayed_call(rest_turn, edge_stack):
    """Both sides relay through coturn with the credentials the edge derived for this session only:
    the browser is never given the shared secret, and another session's credentials differ."""
    first = (await Client(edge_stack.url).http.post("/api/sessions")).json()
    (server,) = first["ice_servers"]
    expiry, session = server["username"].split(":")
    assert session == first["session_id"] and 590 <= int(expiry) - time.time() <= 600
    assert server["credential"] != SHARED_SECRET and SHARED_SECRET not in json.dumps(first)
    client = Client(edge_stack.url)
    used: list[dict] = []

    async def relay_with_this_sessions_credentials(response: httpx.Response) -> None:
        # What the page does: build its peer connection from the servers its session was given.
        if response.request.url.path == "/api/sessions" and response.status_code == 201:
            await response.aread()
            used.extend(response.json()["ice_servers"])
            client.pc = RTCPeerConnection(
                RTCConfiguration(
                    iceServers=[RTCIceServer(**s) for s in used],
                    iceTransportPolicy=RTCIceTransportPolicy.RELAY,
                )
            )

    client.http.event_hooks["response"].append(relay_with_this_sessions_credentials)
    try:
        await client.connect()
        assert used[0]["username"].endswith(":" + client.session_id)
        assert used[0]["username"] != server["username"]
        await model_audio_flows(edge_stack, client, seconds=5)
        assert nominated(client.pc).local_candidate.type == "relay"
        assert nominated(edge_stack.edge.sessions[client.session_id].pc).local_candidate.type == "relay"
    finally:
        await client.close()


def test_turn_credentials_are_the_turn_rest_api_hmac():
    from microturn.config.settings import EdgeSettings
    from microturn.edge.turn import credential, session_ice_servers

    cfg = EdgeSettings(
        ice_servers=[
            {"urls": ["stun:stun.example.org"]},
            {"urls": ["turn:t.example.org"]},
            {"urls": ["turns:u"], "username": "static", "credential": "pw"},
        ],
        turn_shared_secret="s3cret",
        turn_credential_ttl_s=100,
    )
    stun, turn, static = session_ice_servers(cfg, "sA", now=1000.0)
    assert stun.username is None  # STUN needs none
    assert turn.username == "1100:sA"
    # RFC-draft TURN REST API: base64(HMAC-SHA1(secret, username)); a known vector from Python's hmac.
    import base64
    import hashlib
    import hmac

    assert (
        turn.credential == base64.b64encode(hmac.new(b"s3cret", b"1100:sA", hashlib.sha1).digest()).decode()
    )
    assert turn.credential == credential("s3cret", "1100:sA")
    assert (static.username, static.credential) == ("static", "pw")  # configured ones are kept
