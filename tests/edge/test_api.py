"""The edge's HTTP API: bad input gets clear errors; limits hold; sessions are reaped."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from .conftest import wait_until
from .webrtc_client import EdgeClient, ToneTrack


async def create(http: httpx.AsyncClient) -> tuple[str, dict[str, str]]:
    r = await http.post("/api/sessions")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["limits"]["chunk_ms"] == 200 and body["ice_servers"] == []
    return body["session_id"], {"Authorization": f"Bearer {body['token']}"}


async def test_bad_offers_are_400_with_a_reason(edge_stack):
    async with httpx.AsyncClient(base_url=edge_stack.url) as http:
        sid, auth = await create(http)
        url = f"/api/sessions/{sid}/offer"
        cases = [
            ({"sdp": "v=0\r\nthis is not sdp", "type": "offer"}, "no audio section"),
            ({"sdp": "", "type": "offer"}, "non-empty string"),
            ({"sdp": "v=0", "type": "answer"}, '"type" must be "offer"'),
            (["not", "an", "object"], "JSON object"),
            ({"sdp": "v=0\r\n" + "a=x\r\n" * 10_000, "type": "offer"}, "bytes, at most"),
        ]
        for body, reason in cases:
            r = await http.post(url, json=body, headers=auth)
            assert r.status_code == 400, (body, r.text)
            assert reason in r.json()["detail"], r.json()
        r = await http.post(
            url, content=b"{broken json", headers={**auth, "Content-Type": "application/json"}
        )
        assert r.status_code == 400 and "bad offer" in r.json()["detail"]
        # an offer without candidates (trickle ICE) is refused with the reason
        client = EdgeClient(edge_stack.url, video=False)
        client.pc.addTrack(ToneTrack())
        await client.pc.setLocalDescription(await client.pc.createOffer())
        no_candidates = "\r\n".join(
            line
            for line in client.pc.localDescription.sdp.split("\r\n")
            if not line.startswith("a=candidate")
        )
        r = await http.post(url, json={"sdp": no_candidates, "type": "offer"}, headers=auth)
        assert r.status_code == 400 and "no ICE candidates" in r.json()["detail"]
        await client.pc.close()
        await client.http.aclose()
        assert sid in edge_stack.edge.sessions  # still waiting for a good offer


async def test_tokens(edge_stack):
    async with httpx.AsyncClient(base_url=edge_stack.url) as http:
        sid, auth = await create(http)
        other, other_auth = await create(http)
        body = {"sdp": "v=0", "type": "offer"}
        r = await http.post(f"/api/sessions/{sid}/offer", json=body)
        assert r.status_code == 401 and "missing session token" in r.json()["detail"]
        assert r.headers["WWW-Authenticate"] == "Bearer"
        token = auth["Authorization"].split()[1]
        forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
        r = await http.post(
            f"/api/sessions/{sid}/offer", json=body, headers={"Authorization": f"Bearer {forged}"}
        )
        assert r.status_code == 401 and "signature" in r.json()["detail"]
        r = await http.post(f"/api/sessions/{sid}/offer", json=body, headers=other_auth)
        assert r.status_code == 401 and "another session" in r.json()["detail"]
        r = await http.delete(f"/api/sessions/{sid}", headers=auth)
        assert r.status_code == 204 and sid not in edge_stack.edge.sessions
        r = await http.post(f"/api/sessions/{sid}/offer", json=body, headers=auth)
        assert r.status_code == 404 and "unknown session" in r.json()["detail"]
        assert other in edge_stack.edge.sessions  # the other session is untouched


@pytest.mark.parametrize("edge_stack", [{"token_ttl_s": 0.2}], indirect=True)
async def test_expired_token(edge_stack):
    async with httpx.AsyncClient(base_url=edge_stack.url) as http:
        sid, auth = await create(http)
        await asyncio.sleep(0.4)
        r = await http.post(f"/api/sessions/{sid}/offer", json={"sdp": "v=0", "type": "offer"}, headers=auth)
        assert r.status_code == 401 and "expired" in r.json()["detail"]
        # expiry bounds when a call may start, not how long it lasts: hanging up still works
        r = await http.delete(f"/api/sessions/{sid}", headers=auth)
        assert r.status_code == 204 and sid not in edge_stack.edge.sessions
        r = await http.delete(f"/api/sessions/{sid}", headers={"Authorization": "Bearer forged.token"})
        assert r.status_code == 401


@pytest.mark.parametrize("edge_stack", [{"max_sessions": 2}], indirect=True)
async def test_over_capacity_is_503_with_retry_after(edge_stack):
    async with httpx.AsyncClient(base_url=edge_stack.url) as http:
        first, auth = await create(http)
        await create(http)
        r = await http.post("/api/sessions")
        assert r.status_code == 503 and int(r.headers["Retry-After"]) > 0
        assert "limit of 2 sessions" in r.json()["detail"]
        await http.delete(f"/api/sessions/{first}", headers=auth)
        assert (await http.post("/api/sessions")).status_code == 201


async def test_second_offer_is_409(edge_stack):
    client = EdgeClient(edge_stack.url, video=False)
    await client.connect()
    r = await client.http.post(
        f"/api/sessions/{client.session_id}/offer",
        json={"sdp": client.pc.localDescription.sdp, "type": "offer"},
        headers=client.auth,
    )
    assert r.status_code == 409
    await client.close()


@pytest.mark.parametrize("edge_stack", [{"offer_timeout_s": 0.5}], indirect=True)
async def test_session_without_offer_is_reaped(edge_stack):
    async with httpx.AsyncClient(base_url=edge_stack.url) as http:
        sid, _ = await create(http)
        await wait_until(lambda: sid not in edge_stack.edge.sessions, 10, "the reaper")


async def test_health_metrics_and_page(edge_stack):
    async with httpx.AsyncClient(base_url=edge_stack.url) as http:
        r = await http.get("/healthz")
        assert r.status_code == 200 and r.text.startswith("ok 0/")
        r = await http.get("/metrics")
        assert r.status_code == 200 and "text/plain" in r.headers["content-type"]
        r = await http.get("/")
        assert r.status_code == 200 and "<html" in r.text.lower()
