"""helm test: a synthetic call without a browser (run with the microturn image's python).

1. The edge's session API: create a session (POST /api/sessions) and check the answer, then hang
   it up (DELETE with its bearer token).
2. A session on the interaction service, the way the edge opens one: micro-turns of a tone sent at
   real time over the gRPC stream, each answered by one output chunk in order, then a clean close.

A call with WebRTC media needs a browser or aiortc caller (the loadtest package, not in the image).

Usage: python synthetic_call.py EDGE_URL INTERACTION_HOST:PORT APP_NAME CHUNKS TIMEOUT_S
"""

import asyncio
import json
import math
import struct
import sys
import time
import urllib.request
import uuid


def http(method: str, url: str, body: bytes | None = None, token: str | None = None):
    req = urllib.request.Request(url, data=body, method=method)  # noqa: S310 (cluster-internal URL)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310
        return r.status, r.read()


def edge_session(edge: str) -> None:
    status, body = http("POST", f"{edge}/api/sessions", b"{}")
    assert status == 201, f"POST /api/sessions: status {status}"
    created = json.loads(body)
    for key in ("session_id", "token", "expires_at_unix_ms", "ice_servers", "limits"):
        assert key in created, f"POST /api/sessions: no {key} in {sorted(created)}"
    assert created["limits"].get("chunk_ms", 0) > 0, f"bad limits {created['limits']}"
    print(f"ok   edge session {created['session_id']} ({len(created['ice_servers'])} ICE servers)", flush=True)
    status, _ = http("DELETE", f"{edge}/api/sessions/{created['session_id']}", token=created["token"])
    assert status == 204, f"DELETE /api/sessions/...: status {status}"
    print("ok   edge session closed", flush=True)


def tone(index: int, samples: int) -> bytes:
    freq = 220 + 30 * (index % 7)
    return struct.pack(
        f"<{samples}h", *(int(3000 * math.sin(2 * math.pi * freq * n / 16000)) for n in range(samples))
    )


async def interaction_session(target: str, app: str, chunks: int, timeout_s: float) -> None:
    import grpc

    from microturn.interaction.client import InteractionSession
    from microturn.protocol.chunks import input_chunk
    from microturn.protocol.clock import ChunkClock, now_unix_ms

    clock = ChunkClock()
    samples = 16 * clock.chunk_ms
    async with grpc.aio.insecure_channel(target) as channel:
        t0 = clock.floor(now_unix_ms())
        sid = f"helm-test-{uuid.uuid4().hex[:12]}"
        session = InteractionSession(channel, app, sid, seed=1, t0_ms=t0)
        accepted = await asyncio.wait_for(session.open(), timeout_s)
        print(f"ok   interaction session {sid} on replica {accepted.replica_id}", flush=True)
        start = time.monotonic()
        for k in range(chunks):
            # real time: chunk k is sent once its media has ended
            await asyncio.sleep(max(0.0, (t0 + (k + 1) * clock.chunk_ms) / 1000 - time.time()))
            await session.send(input_chunk(sid, k, t0, tone(k, samples), clock=clock))
            msg = await asyncio.wait_for(session.receive(), timeout_s)
            kind = msg.WhichOneof("kind")
            assert kind == "chunk", f"chunk {k}: got {kind}: {msg}"
            assert msg.chunk.header.chunk_index == k, f"chunk {k}: answered {msg.chunk.header.chunk_index}"
        await session.close("helm test done")
        took = time.monotonic() - start
        print(f"ok   {chunks} micro-turns answered in order in {took:.1f} s", flush=True)


def main(argv: list[str]) -> int:
    edge, target, app, chunks, timeout_s = argv[0], argv[1], argv[2], int(argv[3]), float(argv[4])
    edge_session(edge.rstrip("/"))
    asyncio.run(interaction_session(target, app, chunks, timeout_s))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
