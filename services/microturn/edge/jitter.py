"""The inbound audio jitter buffer of the edge's peer connections.

aiortc gives every audio receiver a jitter buffer that releases a frame only once four later frames
have arrived (``prefetch=4``): 80 ms of 20 ms Opus frames added to every caller's speech before the
edge can cut it into a chunk, and so to every turn. ``edge.audio_jitter_prefetch_frames`` sets it:

- ``0`` (the default): no holding at all. An audio RTP packet is a whole frame, so each is decoded the
  moment it arrives; one that arrives after a later one is dropped (the decoder conceals it, as it does
  a lost one). Reordering is rare on the paths calls take; every turn is 80 ms shorter.
- ``1..8``: aiortc's own buffer holding that many frames (1: a frame leaves when the next arrives, so a
  packet swapped with its neighbour is still put back in order, at 20 ms).

aiortc keeps the buffer private, so this replaces it on each audio receiver, for the aiortc versions
it was checked on (others keep aiortc's own, with a warning).
"""

from __future__ import annotations

import logging

import aiortc
from aiortc import RTCPeerConnection
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtp import RtpPacket
from aiortc.utils import uint16_add

log = logging.getLogger(__name__)

TESTED_AIORTC = ("1.16",)  # versions whose RTCRtpReceiver keeps its buffer in __jitter_buffer
_ATTR = "_RTCRtpReceiver__jitter_buffer"
AIORTC_CAPACITY = 16  # aiortc's own capacity for audio (packets)
_warned = False


class ArrivalOrderBuffer(JitterBuffer):
    """Each audio packet out the moment it arrives; one older than the newest seen is dropped."""

    def __init__(self) -> None:
        super().__init__(capacity=AIORTC_CAPACITY)
        self.late = 0  # packets dropped for arriving after a later one

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        seq = packet.sequence_number
        if self._origin is not None and uint16_add(seq, -self._origin) >= 0x8000:  # before the next expected
            self.late += 1
            return False, None
        self._origin = uint16_add(seq, 1)
        return False, JitterFrame(data=packet._data, timestamp=packet.timestamp)


def set_audio_prefetch(pc: RTCPeerConnection, frames: int) -> int:
    """Give each audio receiver of ``pc`` a buffer that holds ``frames`` frames; returns how many
    receivers got one (0 when aiortc is not a version this was checked on)."""
    global _warned
    if not aiortc.__version__.startswith(TESTED_AIORTC):
        if not _warned:
            log.warning("aiortc %s: edge.audio_jitter_prefetch_frames not applied (checked on %s)",
                        aiortc.__version__, ", ".join(TESTED_AIORTC))  # fmt: skip
            _warned = True
        return 0
    done = 0
    for receiver in pc.getReceivers():
        if receiver.track is not None and receiver.track.kind == "audio" and hasattr(receiver, _ATTR):
            buffer = (
                ArrivalOrderBuffer()
                if frames == 0
                else JitterBuffer(capacity=AIORTC_CAPACITY, prefetch=frames)
            )
            setattr(receiver, _ATTR, buffer)
            done += 1
    return done
