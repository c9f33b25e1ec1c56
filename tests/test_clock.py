"""Chunk clock properties and chunk header helpers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from microturn.protocol.chunks import hop_latencies_us, make_header, stamp, validate_session_id
from microturn.protocol.clock import ChunkClock

chunk_lengths = st.sampled_from([20, 40, 50, 100, 125, 200, 250, 500, 1000])
times = st.integers(min_value=0, max_value=2**45)


@given(chunk_lengths, times)
def test_floor_is_boundary_at_or_before(chunk, t):
    c = ChunkClock(chunk)
    b = c.floor(t)
    assert b % chunk == 0
    assert b <= t < b + chunk


@given(chunk_lengths, times)
def test_ceil_and_next_boundary(chunk, t):
    c = ChunkClock(chunk)
    assert c.ceil(t) % chunk == 0 and t <= c.ceil(t) < t + chunk
    nb = c.next_boundary(t)
    assert nb % chunk == 0 and t < nb <= t + chunk
    assert nb == c.floor(t) + chunk


@given(chunk_lengths, times, st.integers(min_value=0, max_value=10**7))
def test_index_and_start_are_inverse(chunk, start, k):
    c = ChunkClock(chunk)
    t0 = c.origin(start)
    s = c.start(t0, k)
    assert c.index(t0, s) == k
    assert c.index(t0, c.end(t0, k) - 1) == k
    assert c.index(t0, c.end(t0, k)) == k + 1
    assert s % chunk == 0


@given(
    chunk_lengths,
    times,
    st.integers(min_value=0, max_value=10**6),
    st.integers(min_value=-(10**5), max_value=10**5),
)
def test_lag(chunk, start, k, late):
    c = ChunkClock(chunk)
    t0 = c.origin(start)
    media = c.start(t0, k)
    assert c.lag_ms(media, c.end(t0, k) + late) == late


@given(times)
def test_origin_contains_session_start(start):
    c = ChunkClock()
    t0 = c.origin(start)
    assert c.index(t0, start) == 0


def test_bad_clock_inputs():
    with pytest.raises(ValueError, match="positive"):
        ChunkClock(0)
    with pytest.raises(ValueError, match="not a multiple"):
        ChunkClock(200).index(t0_ms=150, t_ms=1000)


def test_header_and_hop_latencies():
    c = ChunkClock()
    h = make_header("abc", 7, 1_000_000_000_000, c)
    assert (h.chunk_index, h.media_start_unix_ms, h.duration_ms) == (7, 1_000_000_001_400, 200)
    stamp(h, "edge", at_us=100)
    stamp(h, "interaction", at_us=350)
    assert hop_latencies_us(h, received_us=1000) == {"edge->interaction": 250, "interaction->recv": 650}


@pytest.mark.parametrize("bad", ["", "a b", "x" * 65, "é", "a/b"])
def test_bad_session_ids(bad):
    with pytest.raises(ValueError):
        validate_session_id(bad)


def test_good_session_id():
    assert validate_session_id("sess_01-AB") == "sess_01-AB"
