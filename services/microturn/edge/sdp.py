"""Checks on a browser's SDP offer before aiortc sees it, so a bad offer is a 400 with a reason.

aiortc raises OperationError, AttributeError or worse on offers it cannot answer (no common codec,
no ``a=setup``, an unknown media kind), and one without a usable DTLS fingerprint is answered and
then fails in the handshake; everything here is refused up front instead.
"""

from __future__ import annotations

from aiortc import RTCSessionDescription
from aiortc.codecs import CODECS
from aiortc.rtcdtlstransport import X509_DIGEST_ALGORITHMS
from aiortc.rtcpeerconnection import find_common_codecs
from aiortc.sdp import MediaDescription, SessionDescription

from microturn.edge.events import BadJson, loads_json

MEDIA_KINDS = ("audio", "video", "application")


class SdpError(ValueError):
    pass


def parse_offer(raw: bytes, max_bytes: int, max_depth: int) -> RTCSessionDescription:
    """The offer in a request body, or SdpError saying what is wrong with the body."""
    try:
        body = loads_json(raw, max_depth)
    except BadJson as exc:
        raise SdpError(str(exc)) from None
    return check_offer(body, max_bytes)


def check_offer(body: object, max_bytes: int) -> RTCSessionDescription:
    if not isinstance(body, dict):
        raise SdpError('the body must be a JSON object {"sdp": ..., "type": "offer"}')
    sdp, kind = body.get("sdp"), body.get("type")
    if kind != "offer":
        raise SdpError(f'"type" must be "offer", got {_short(kind)}')
    if not isinstance(sdp, str) or not sdp.strip():
        raise SdpError('"sdp" must be a non-empty string')
    size = len(sdp.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise SdpError(f"the SDP is {size} bytes, at most {max_bytes}")
    try:
        sdp.encode("utf-8")
        parsed = SessionDescription.parse(sdp)
    except Exception as exc:
        raise SdpError(f"the SDP does not parse: {_short(exc)}") from None
    kinds = [m.kind for m in parsed.media]
    if "audio" not in kinds:
        raise SdpError("the offer has no audio section: a microphone track is required")
    if not any(m.ice_candidates for m in parsed.media):
        raise SdpError("the offer has no ICE candidates: gather them before sending it (no trickle ICE)")
    if not all(m.ice and m.ice.usernameFragment and m.ice.password for m in parsed.media):
        raise SdpError("the offer lacks ICE credentials (a=ice-ufrag / a=ice-pwd)")
    _check_sections(parsed)
    for m in parsed.media:
        _check_dtls(m)
        if m.kind in ("audio", "video"):
            _check_codecs(m)
    return RTCSessionDescription(sdp=sdp, type="offer")


def _check_sections(parsed: SessionDescription) -> None:
    """One section per kind, each a known kind with its own mid, and a BUNDLE led by one of them:
    what a browser offers, and what aiortc can map back to its transports when it answers (a
    BUNDLE led by an unknown mid leaves sections without one, and the peer connection then fails
    even to close)."""
    mids: set[str] = set()
    kinds: set[str] = set()
    for m in parsed.media:
        if m.kind not in MEDIA_KINDS:
            raise SdpError(
                f"unsupported media section m={_short(m.kind, 20)} (audio, video, application only)"
            )
        if m.kind in kinds:
            raise SdpError(f"more than one {m.kind} section: at most one of each kind")
        kinds.add(m.kind)
        if not m.rtp.muxId or m.rtp.muxId in mids:
            raise SdpError(f"the {m.kind} section needs its own a=mid")
        mids.add(m.rtp.muxId)
    for group in parsed.group:
        if group.semantic == "BUNDLE" and group.items and group.items[0] not in mids:
            raise SdpError(
                f"a=group:BUNDLE starts with mid {_short(group.items[0], 20)}, which no section has"
            )


def _check_dtls(m: MediaDescription) -> None:
    # aiortc copies session-level a=setup / a=fingerprint into each section while parsing
    if m.dtls is None:
        raise SdpError(f"the {m.kind} section has no DTLS role (a=setup)")
    if not any(f.algorithm.lower() in X509_DIGEST_ALGORITHMS for f in m.dtls.fingerprints):
        algorithms = ", ".join(X509_DIGEST_ALGORITHMS)
        raise SdpError(f"the {m.kind} section has no DTLS fingerprint (a=fingerprint with {algorithms})")


def _check_codecs(m: MediaDescription) -> None:
    try:
        common = find_common_codecs(CODECS[m.kind], m.rtp.codecs)
    except Exception as exc:
        raise SdpError(f"the {m.kind} codecs do not parse: {_short(exc)}") from None
    if not common:
        names = ", ".join(sorted({c.mimeType.split("/")[1] for c in CODECS[m.kind]} - {"rtx"}))
        raise SdpError(f"the {m.kind} section offers no codec the edge supports ({names})")


def _short(value: object, n: int = 80) -> str:
    """A bounded repr, for a reason that quotes client input."""
    text = repr(value) if not isinstance(value, BaseException) else f"{type(value).__name__}: {value}"
    return text if len(text) <= n else text[: n - 3] + "..."
