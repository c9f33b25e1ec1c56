"""The edge's HTTP API (FastAPI): create a session, answer its SDP offer, close it; health,
metrics, and the browser client. See docs/EDGE.md for the contract."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from fastapi import FastAPI, Header, HTTPException, Request, Response
from fastapi.responses import FileResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from microturn.config import Settings
from microturn.edge.sdp import SdpError, check_offer
from microturn.edge.server import EdgeFull, EdgeServer
from microturn.edge.tokens import TokenError

STATIC_DIR = Path(__file__).with_name("static")


class SessionCreated(BaseModel):
    session_id: str
    token: str
    expires_at_unix_ms: int
    ice_servers: list[dict]
    limits: dict[str, int]


class Answer(BaseModel):
    sdp: str
    type: str


def _bearer(authorization: str | None) -> str | None:
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return None


def create_app(settings: Settings, on_started: Callable[[], None] | None = None) -> FastAPI:
    edge = EdgeServer(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await edge.start()
        if on_started is not None:
            on_started()
        try:
            yield
        finally:
            await edge.stop()

    app = FastAPI(title="microturn edge", lifespan=lifespan)
    app.state.edge = edge

    def authorized(session_id: str, authorization: str | None):
        session = edge.sessions.get(session_id)
        try:
            edge.tokens.verify(_bearer(authorization), session_id)
        except TokenError as exc:
            raise HTTPException(401, str(exc), headers={"WWW-Authenticate": "Bearer"}) from None
        if session is None:
            raise HTTPException(404, f"unknown session {session_id} (closed or reaped)")
        return session

    @app.post("/api/sessions", status_code=201, response_model=SessionCreated)
    async def create_session() -> SessionCreated:
        try:
            session, token, expires = edge.create()
        except EdgeFull as exc:
            raise HTTPException(503, str(exc), headers={"Retry-After": "5"}) from None
        return SessionCreated(
            session_id=session.session_id,
            token=token,
            expires_at_unix_ms=expires,
            ice_servers=[s.model_dump(exclude_none=True) for s in settings.edge.ice_servers],
            limits={
                "chunk_ms": settings.limits.chunk_ms,
                "max_text_bytes": settings.limits.max_text_bytes_per_chunk,
            },
        )

    @app.post("/api/sessions/{session_id}/offer", response_model=Answer)
    async def offer(session_id: str, request: Request, authorization: str | None = Header(None)) -> Answer:
        session = authorized(session_id, authorization)
        if session.state != "created":
            raise HTTPException(409, f"session {session_id} already has a peer connection")
        raw = await request.body()
        if len(raw) > settings.edge.max_sdp_bytes + 1024:
            raise HTTPException(400, f"offer body of {len(raw)} bytes, at most {settings.edge.max_sdp_bytes}")
        try:
            body = await request.json()
            desc = check_offer(body, settings.edge.max_sdp_bytes)
        except ValueError as exc:  # SdpError, or JSON that does not parse
            raise HTTPException(400, f"bad offer: {exc}") from None
        try:
            answer = await session.accept_offer(desc)
        except (ValueError, SdpError) as exc:
            await edge.close(session_id, "bad offer")
            raise HTTPException(400, f"the offer could not be negotiated: {exc}") from None
        return Answer(sdp=answer.sdp, type=answer.type)

    @app.delete("/api/sessions/{session_id}", status_code=204)
    async def close_session(session_id: str, authorization: str | None = Header(None)) -> Response:
        authorized(session_id, authorization)
        await edge.close(session_id, "closed by the client")
        return Response(status_code=204)

    @app.get("/healthz", response_class=PlainTextResponse)
    async def healthz() -> str:
        return f"ok {len(edge.sessions)}/{settings.edge.max_sessions} sessions\n"

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/")
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
