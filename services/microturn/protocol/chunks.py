"""Building and reading chunk headers: session ids, media spans, and hop-by-hop send stamps."""

from __future__ import annotations

import itertools
import re

from microturn.protocol.clock import ChunkClock, now_unix_us
from microturn.v1 import chunk_pb2, media_pb2

SESSION_ID_MAX_BYTES = 64
_SESSION_ID_RE = re.compile(r"^[A-Za-z0-9_\-]+$")


def validate_session_id(session_id: str) -> str:
    """Session ids are URL-safe and short because they travel in gRPC metadata, NATS subjects
    and metric attributes. Raises ValueError naming the rule that failed."""
    if not session_id:
        raise ValueError("session id is empty")
    if len(session_id.encode()) > SESSION_ID_MAX_BYTES:
        raise ValueError(f"session id is longer than {SESSION_ID_MAX_BYTES} bytes")
    if not _SESSION_ID_RE.match(session_id):
        raise ValueError("session id may contain only letters, digits, '-' and '_'")
    return session_id


def make_header(session_id: str, index: int, t0_ms: int, clock: ChunkClock) -> chunk_pb2.ChunkHeader:
    return chunk_pb2.ChunkHeader(
        session_id=session_id,
        chunk_index=index,
        media_start_unix_ms=clock.start(t0_ms, index),
        duration_ms=clock.chunk_ms,
    )


def stamp(header: chunk_pb2.ChunkHeader, hop: str, at_us: int | None = None) -> None:
    """Append this hop's send stamp; call right before the message leaves the process."""
    header.hops.add(hop=hop, sent_unix_us=now_unix_us() if at_us is None else at_us)


def hop_latencies_us(header: chunk_pb2.ChunkHeader, received_us: int | None = None) -> dict[str, int]:
    """Latency of each hop: ``"a->b"`` is b's stamp minus a's; the last hop to the receiver is
    ``"a->recv"`` when ``received_us`` is given."""
    hops = list(header.hops)
    out = {f"{a.hop}->{b.hop}": b.sent_unix_us - a.sent_unix_us for a, b in itertools.pairwise(hops)}
    if received_us is not None and hops:
        out[f"{hops[-1].hop}->recv"] = received_us - hops[-1].sent_unix_us
    return out


def input_chunk(
    session_id: str,
    index: int,
    t0_ms: int,
    pcm_s16le: bytes,
    *,
    clock: ChunkClock | None = None,
    frames: list[media_pb2.VideoFrame] | None = None,
    typed: list[str] | None = None,
    sample_rate_hz: int = 16_000,
) -> media_pb2.InputChunk:
    """An InputChunk of one micro-turn: mono PCM16 audio, optional frames and typed text."""
    clock = clock or ChunkClock()
    chunk = media_pb2.InputChunk(
        header=make_header(session_id, index, t0_ms, clock),
        audio=media_pb2.AudioPcm(sample_rate_hz=sample_rate_hz, channels=1, pcm_s16le=pcm_s16le),
        video=frames or [],
    )
    for text in typed or []:
        chunk.text.add(
            text=text, source=media_pb2.TEXT_SOURCE_USER_TYPED, created_unix_ms=clock.start(t0_ms, index)
        )
    return chunk
