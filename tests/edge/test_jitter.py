"""The edge's inbound audio buffer (edge.audio_jitter_prefetch_frames): 0 decodes every packet the
moment it arrives and drops one that comes after a later one; n > 0 is aiortc's reordering buffer
holding n frames. Checked on the real aiortc receiver of a real peer connection."""

from __future__ import annotations

import pytest
from aiortc import RTCPeerConnection
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtp import RtpPacket

from microturn.edge.jitter import _ATTR, ArrivalOrderBuffer, set_audio_prefetch


def packet(seq: int) -> RtpPacket:
    p = RtpPacket(payload_type=111, sequence_number=seq % 65536, timestamp=(seq * 960) % 2**32)
    p._data = bytes([seq % 256])
    return p


def test_every_packet_leaves_on_arrival_and_a_late_one_is_dropped():
    buf = ArrivalOrderBuffer()
    out = [buf.add(packet(s))[1] for s in (65534, 65535, 0, 2, 1, 3)]  # wraps; 1 comes after 2
    assert [f.data[0] if f else None for f in out] == [254, 255, 0, 2, None, 3]
    assert buf.late == 1


def test_aiortcs_own_buffer_holds_frames_before_releasing_one():
    """What the default replaces: prefetch=4 keeps the first frame until four more have come."""
    buf = JitterBuffer(capacity=16, prefetch=4)
    released = [buf.add(packet(s))[1] is not None for s in range(6)]
    assert released == [False, False, False, False, True, True]  # 80 ms behind at 20 ms a frame


@pytest.mark.parametrize("frames", [0, 1, 3])
async def test_the_setting_replaces_the_buffer_of_each_audio_receiver(frames):
    caller, edge = RTCPeerConnection(), RTCPeerConnection()
    try:
        caller.addTransceiver("audio", direction="sendrecv")
        caller.addTransceiver("video", direction="sendrecv")
        await caller.setLocalDescription(await caller.createOffer())
        await edge.setRemoteDescription(caller.localDescription)
        assert set_audio_prefetch(edge, frames) == 1  # the audio receiver only
        kinds = {r.track.kind: getattr(r, _ATTR) for r in edge.getReceivers()}
        audio = kinds["audio"]
        assert isinstance(audio, ArrivalOrderBuffer) if frames == 0 else audio._prefetch == frames
        assert not isinstance(kinds["video"], ArrivalOrderBuffer) and kinds["video"].capacity == 512
    finally:
        await caller.close()
        await edge.close()
