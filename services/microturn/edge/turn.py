"""Per-session TURN credentials (the "TURN REST API" scheme that coturn's ``use-auth-secret``
implements): username ``<expiry unix>:<session id>``, password ``base64(HMAC-SHA1(secret, username))``.

The edge and the TURN server share one secret; each session's browser (and the edge's own side of
the call) gets credentials that expire after ``edge.turn_credential_ttl_s``, so a credential copied
from a page is useless to anyone else a little later, and nothing long-lived is ever sent out.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

from microturn.config.settings import EdgeSettings, IceServer


def credential(secret: str, username: str) -> str:
    return base64.b64encode(hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()).decode()


def _is_turn(server: IceServer) -> bool:
    return any(u.split(":", 1)[0] in ("turn", "turns") for u in server.urls)


def session_ice_servers(cfg: EdgeSettings, session_id: str, now: float | None = None) -> list[IceServer]:
    """The ICE servers of one session: as configured, with per-session credentials filled in for the
    TURN servers that have none (when ``turn_shared_secret`` is set)."""
    if cfg.turn_shared_secret is None:
        return list(cfg.ice_servers)
    secret = cfg.turn_shared_secret.get_secret_value()
    expiry = int((time.time() if now is None else now) + cfg.turn_credential_ttl_s)
    username = f"{expiry}:{session_id}"
    out = []
    for server in cfg.ice_servers:
        if _is_turn(server) and server.username is None and server.credential is None:
            server = server.model_copy(
                update={"username": username, "credential": credential(secret, username)}
            )
        out.append(server)
    return out
