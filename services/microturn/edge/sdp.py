"""Checks on a browser's SDP offer before aiortc sees it, so a bad offer is a 400 with a reason."""

from __future__ import annotations

from aiortc import RTCSessionDescription
from aiortc.sdp import SessionDescription


class SdpError(ValueError):
    pass


def check_offer(body: object, max_bytes: int) -> RTCSessionDescription:
    if not isinstance(body, dict):
        raise SdpError('the body must be a JSON object {"sdp": ..., "type": "offer"}')
    sdp, kind = body.get("sdp"), body.get("type")
    if kind != "offer":
        raise SdpError(f'"type" must be "offer", got {kind!r}')
    if not isinstance(sdp, str) or not sdp.strip():
        raise SdpError('"sdp" must be a non-empty string')
    if len(sdp.encode()) > max_bytes:
        raise SdpError(f"the SDP is {len(sdp.encode())} bytes, at most {max_bytes}")
    try:
        parsed = SessionDescription.parse(sdp)
    except Exception as exc:
        raise SdpError(f"the SDP does not parse: {exc}") from None
    kinds = [m.kind for m in parsed.media]
    if "audio" not in kinds:
        raise SdpError("the offer has no audio section: a microphone track is required")
    if not any(m.ice_candidates for m in parsed.media):
        raise SdpError("the offer has no ICE candidates: gather them before sending it (no trickle ICE)")
    if not all(m.ice and m.ice.usernameFragment and m.ice.password for m in parsed.media):
        raise SdpError("the offer lacks ICE credentials (a=ice-ufrag / a=ice-pwd)")
    return RTCSessionDescription(sdp=sdp, type="offer")
