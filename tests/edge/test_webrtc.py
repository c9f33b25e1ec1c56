"""End to end over real WebRTC (aiortc client → edge → real interaction core over gRPC)."""

from __future__ import annotations

import asyncio
import itertools

import numpy as np

from microturn.protocol.clock import ChunkClock

from .conftest import wait_until
from .webrtc_client import EdgeClient


def rms(pcm: np.ndarray) -> float:
    return float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2)))


async def test_call_end_to_end(edge_stack):
    client = EdgeClient(edge_stack.url)
    await client.connect()
    sid = client.session_id
    inputs = edge_stack.inputs
    await wait_until(lambda: len(inputs[sid]) >= 12, 60, "12 chunks at the model")
    client.send_text("hello model")
    client.channel.send("{not json")
    await wait_until(lambda: len(inputs[sid]) >= 24, 60, "24 chunks at the model")
    events = list(client.events)
    await client.close()
    await wait_until(lambda: sid not in edge_stack.edge.sessions, 10, "the edge to release the session")

    chunks = inputs[sid]
    # consecutive indices from 0, on wall-clock boundaries
    assert [c.chunk_index for c in chunks] == list(range(len(chunks)))
    session = edge_stack.edge  # released: check what the model saw instead
    del session
    assert all(c.pcm.shape == (3200,) and c.pcm.dtype == np.int16 for c in chunks)
    # the mic alternates 1 s tone / 1 s silence: chunk energies come in runs of ~5 loud, ~5 quiet
    loud = np.array([rms(c.pcm) > 1000 for c in chunks[1:]])
    assert loud.any() and (~loud).any()
    runs = np.diff(np.flatnonzero(np.diff(loud.astype(int)) != 0))
    assert len(runs) >= 2 and all(4 <= r <= 6 for r in runs), f"tone runs of {runs} chunks, expected 5"
    # every Nth camera frame, downscaled to 80x80, moving
    frames = [f for c in chunks if c.video is not None for f in c.video]
    assert len(frames) >= 10 and frames[0].shape == (80, 80, 3)
    assert any(not np.array_equal(frames[0], f) for f in frames[1:])
    # typed text reached the model once; junk got an error event and the session went on
    assert sum(c.text.count("hello model") for c in chunks) == 1
    assert any(e["type"] == "error" and e["code"] == "BAD_MESSAGE" for e in events)
    assert any(e["type"] == "state" and e["state"] == "live" for e in events)
    out_chunks = [e["chunk"] for e in events if e["type"] == "chunk"]
    assert out_chunks == list(range(len(out_chunks))) and len(out_chunks) >= 20
    assert all(e["model_version"] == "tiny-test" for e in events if e["type"] == "chunk")
    # audio came back as consecutive 20 ms frames (pts without gaps), carrying the model's output
    frames_back = client.audio_frames
    assert len(frames_back) >= 50
    steps = {b.pts - a.pts for a, b in itertools.pairwise(frames_back)}
    assert steps == {frames_back[0].samples}, f"pts steps {steps}"
    back = np.concatenate([f.to_ndarray().reshape(-1) for f in frames_back])
    assert rms(back) > 0


async def test_chunk_timestamps_sit_on_boundaries(edge_stack):
    client = EdgeClient(edge_stack.url, video=False)
    await client.connect()
    sid = client.session_id
    await wait_until(
        lambda: sid in edge_stack.edge.sessions and edge_stack.edge.sessions[sid].chunks_sent >= 3,
        30,
        "3 chunks",
    )
    session = edge_stack.edge.sessions[sid]
    t0 = session.t0_ms
    window = dict(session.grpc.window)
    await client.close()
    assert t0 % 200 == 0
    clock = ChunkClock()
    for k, chunk in window.items():
        h = chunk.header
        assert h.media_start_unix_ms == clock.start(t0, k) and h.duration_ms == 200
        assert [hop.hop for hop in h.hops] == ["edge"]
        # the edge sent it right after the chunk's media ended
        assert h.hops[0].sent_unix_us // 1000 >= clock.end(t0, k)


async def test_released_on_peer_close(edge_stack):
    client = EdgeClient(edge_stack.url, video=False)
    await client.connect()
    sid = client.session_id
    await wait_until(lambda: len(edge_stack.inputs[sid]) >= 2, 30, "2 chunks")
    await client.pc.close()  # the browser goes away without DELETE
    await wait_until(lambda: sid not in edge_stack.edge.sessions, 20, "the edge to release the session")
    await asyncio.sleep(0.5)
    assert sid not in edge_stack.core.sessions
    await client.http.aclose()
