"""Signed, expiring session tokens: the offer and close endpoints take only the token that
creating the session returned. HMAC-SHA256 over the session id and expiry (stdlib only); edges
behind one load balancer share ``edge.token_secret``."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time


class TokenError(Exception):
    """The token is missing, malformed, forged, expired or for another session."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SessionTokens:
    def __init__(self, secret: str | None, ttl_s: float) -> None:
        self.key = (secret or secrets.token_hex(32)).encode()
        self.ttl_s = ttl_s

    def issue(self, session_id: str) -> tuple[str, int]:
        expires_ms = int((time.time() + self.ttl_s) * 1000)
        body = _b64(json.dumps({"sid": session_id, "exp": expires_ms}, separators=(",", ":")).encode())
        return f"{body}.{self._sign(body)}", expires_ms

    def verify(self, token: str | None, session_id: str, check_expiry: bool = True) -> None:
        """Raise TokenError unless ``token`` was issued here for ``session_id`` (and has not expired,
        when ``check_expiry``: expiry bounds when a call may start, not how long it may last)."""
        if not token:
            raise TokenError("missing session token: send 'Authorization: Bearer <token>'")
        body, _, sig = token.partition(".")
        if not body or not sig:
            raise TokenError("malformed session token")
        if not hmac.compare_digest(sig, self._sign(body)):
            raise TokenError("invalid session token signature")
        try:
            claims = json.loads(_unb64(body))
            sid, exp = claims["sid"], int(claims["exp"])
        except (ValueError, KeyError, TypeError):
            raise TokenError("malformed session token") from None
        if sid != session_id:
            raise TokenError("session token is for another session")
        if check_expiry and exp < time.time() * 1000:
            raise TokenError("session token expired")

    def _sign(self, body: str) -> str:
        return _b64(hmac.new(self.key, body.encode(), hashlib.sha256).digest())
