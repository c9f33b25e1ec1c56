"""One call is one trace: the edge's call span is its root; each micro-turn's edge span is the parent
of the replica's span for that micro-turn (its context travels in the chunk header), the replica's
stream span is a child of the call span (OpenSession.trace_context), and each tick links the
micro-turns it computed. An error sent to the client is a span of its own, and every span carries the
ids a reader follows the call by."""

from __future__ import annotations

import argparse
import asyncio
from collections import Counter

import httpx
import pytest

from microturn.config import load_settings
from microturn.edge import trace_cli
from microturn.edge.call_trace import TurnTiming, hop_spans_us
from microturn.localrun.ports import free_port
from microturn.v1 import chunk_pb2, media_pb2

from .conftest import wait_until
from .webrtc_client import EdgeClient

VERSION = "tiny-test"


async def test_a_call_is_one_trace_across_edge_and_replica(edge_stack, spans):
    client = EdgeClient(edge_stack.url, video=False)
    await client.connect()
    try:
        await wait_until(lambda: len(client.chunk_arrivals()) >= 10, 60, "output chunks")
        client.channel.send("{not json")  # a bad data-channel message: an error event
        await wait_until(lambda: any(e.get("type") == "error" for e in client.events), 10, "the error event")
        sid = client.session_id
    finally:
        await client.close()
    await wait_until(lambda: sid not in edge_stack.edge.sessions, 10, "the call to end")
    await asyncio.sleep(0.2)
    got = [s for s in spans.get_finished_spans() if s.attributes.get("session.id") == sid]
    by_name = Counter(s.name for s in got)
    (root,) = [s for s in got if s.name == "edge.session"]
    assert root.parent is None and root.attributes["model.version"] == ""  # (no routing table: the replica's)
    assert {s.context.trace_id for s in got} == {root.context.trace_id}, by_name  # one trace
    (opened,) = [s for s in got if s.name == "interaction.open"]
    assert opened.parent.span_id == root.context.span_id and opened.attributes["replica"] == "replica-edge"
    edge_chunks = {s.attributes["chunk.index"]: s for s in got if s.name == "edge.chunk"}
    replica_chunks = {s.attributes["chunk.index"]: s for s in got if s.name == "interaction.chunk"}
    assert len(replica_chunks) >= 10 and set(replica_chunks) <= set(edge_chunks), by_name
    for k, span in replica_chunks.items():
        edge = edge_chunks[k]
        assert edge.parent.span_id == root.context.span_id
        assert span.parent.span_id == edge.context.span_id, k  # the replica's micro-turn under the edge's
        assert span.attributes["model.version"] == VERSION and span.attributes["replica"] == "replica-edge"
        assert edge.attributes["chunk.answered"] is True and edge.attributes["model.version"] == VERSION
        assert edge.attributes["latency.round_trip_us"] >= edge.attributes["latency.replica_us"] >= 0
        # the tick that computed it links it
        (tick,) = [t for t in spans.get_finished_spans() if t.name == "interaction.tick"
                   and t.context.span_id in {link.context.span_id for link in span.links}]  # fmt: skip
        assert edge.context.span_id in {link.context.span_id for link in tick.links}
    (error,) = [s for s in got if s.name == "edge.error"]
    assert error.attributes["error"] is True and error.parent.span_id == root.context.span_id
    assert [e.name for e in root.events] == ["error"] and "session.end_reason" in root.attributes


def test_the_hop_spans_come_from_the_outputs_stamps():
    out = media_pb2.OutputChunk(header=chunk_pb2.ChunkHeader(chunk_index=3, media_start_unix_ms=800,
                                                             duration_ms=200), engine_us=30_000)  # fmt: skip
    out.header.hops.add(hop="interaction-recv", sent_unix_us=1_000_500)
    out.header.hops.add(hop="interaction", sent_unix_us=1_040_500)
    assert hop_spans_us(out, sent_us=1_000_000, received_us=1_041_000) == {
        "latency.round_trip_us": 41_000, "latency.to_replica_us": 500, "latency.cut_us": 0,
        "latency.replica_us": 40_000, "latency.from_replica_us": 500,
    }  # fmt: skip
    timing = TurnTiming.of(out, hop_spans_us(out, 1_000_000, 1_041_000), playout_ms=60.0)
    assert timing.hops_ms() == {"cut": 0.0, "to_replica": 0.5, "queue": 10.0, "tick": 30.0,
                                "from_replica": 0.5, "playout": 60.0}  # fmt: skip
    assert timing.round_trip_ms == 41.0 and timing.chunk == 3
    bare = media_pb2.OutputChunk()  # a replica that stamps nothing: only what the edge measured itself
    assert hop_spans_us(bare, 1_000, 5_000) == {"latency.round_trip_us": 4_000}


async def test_a_failing_output_path_ends_the_call_with_a_clear_error_not_silence(edge_stack, monkeypatch):
    def broken(self, out):
        raise RuntimeError("measurement bug")

    monkeypatch.setattr("microturn.edge.peer.EdgeSession._measure", broken)
    client = EdgeClient(edge_stack.url, video=False)
    await client.connect()
    try:
        await wait_until(lambda: any(e.get("type") == "error" for e in client.events), 30, "the error event")
        (error,) = [e for e in client.events if e.get("type") == "error"]
        assert error["code"] == "INTERNAL" and "outputs" in error["message"]
        await wait_until(lambda: client.session_id not in edge_stack.edge.sessions, 10, "the call to end")
    finally:
        await client.close()


DEBUG_TOKEN = "operator-debug-token-0123"


@pytest.mark.parametrize("edge_stack", [{"debug_token": DEBUG_TOKEN}], indirect=True)
async def test_the_waterfall_is_served_to_the_call_and_the_operator_and_printed(edge_stack, capsys):
    client = EdgeClient(edge_stack.url, video=False)
    await client.connect()
    try:
        await wait_until(lambda: len(client.chunk_arrivals()) >= 10, 60, "output chunks")
        url = f"{edge_stack.url}/api/sessions/{client.session_id}/timing"
        async with httpx.AsyncClient() as http:
            own = await http.get(url, headers=client.auth)
            operator = await http.get(url, headers={"Authorization": f"Bearer {DEBUG_TOKEN}"})
            wrong = await http.get(url, headers={"Authorization": "Bearer not-the-token"})
            unknown = await http.get(url.replace(client.session_id, "sNoSuchCall"),
                                     headers={"Authorization": f"Bearer {DEBUG_TOKEN}"})  # fmt: skip
        assert own.status_code == operator.status_code == 200 and wrong.status_code == 401
        assert unknown.status_code == 404
        doc = own.json()
        assert doc["session_id"] == client.session_id and len(doc["turns"]) >= 5
        turns = doc["turns"]
        assert [t["chunk"] for t in turns] == sorted(t["chunk"] for t in turns)
        for t in turns:  # every hop measured; the round trip holds the replica's part
            assert t["round_trip_ms"] >= t["to_replica_ms"] + t["queue_ms"] + t["tick_ms"] - 0.01, t
        assert set(doc["summary"]) == {*TurnTiming.HOPS, "round_trip"}
        assert doc["summary"]["tick"]["p50"] > 0 and doc["summary"]["round_trip"]["n"] == len(turns)

        settings = load_settings(overrides={"edge": {"debug_token": DEBUG_TOKEN}})
        ns = argparse.Namespace(
            session=client.session_id, edge=edge_stack.url, token=None, last=3, json=False
        )
        assert await asyncio.to_thread(trace_cli.run, ns, settings) == 0
        out = capsys.readouterr().out
        assert client.session_id in out and "round_trip" in out and "queue" in out
        rows = [line.split()[0] for line in out.strip().splitlines()[-3:]]  # the last three micro-turns
        assert all(r.isdigit() for r in rows) and [int(r) - int(rows[0]) for r in rows] == [0, 1, 2], out
        ns.token = "not-the-token"
        assert await asyncio.to_thread(trace_cli.run, ns, settings) == 2
        assert "refused the token" in capsys.readouterr().err
    finally:
        await client.close()


def test_the_trace_command_says_when_the_edge_is_not_there(capsys):
    ns = argparse.Namespace(
        session="s1", edge=f"http://127.0.0.1:{free_port()}", token=None, last=3, json=False
    )
    assert trace_cli.run(ns, load_settings()) == 3
    assert "cannot reach the edge" in capsys.readouterr().err
