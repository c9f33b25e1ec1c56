"""The edge's HTTP API (FastAPI): create a session, answer its SDP offer, close it; health,
metrics, and the browser client. See docs/EDGE.md for the contract."""

from __future__ import annotations

import contextlib
import hmac
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from fastapi import FastAPI, Header, HTTPException, Request, Response
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from opentelemetry.metrics import MeterProvider
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from microturn.config import Settings
from microturn.edge.call_trace import waterfall
from microturn.edge.peer import EdgeSession, NoCandidates
from microturn.edge.sdp import SdpError, parse_offer
from microturn.edge.server import EdgeFull, EdgeServer
from microturn.edge.tokens import TokenError

STATIC_DIR = Path(__file__).with_name("static")

log = logging.getLogger(__name__)


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


def _awaits_offer(session: EdgeSession) -> bool:
    return session.state == "created" and session.pc is None and not session.closed


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused once it passes ``limit`` instead of buffered whole first."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise HTTPException(400, f"offer body of {declared} bytes, at most {limit}")
    parts, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise HTTPException(400, f"offer body of more than {limit} bytes")
        parts.append(part)
    return b"".join(parts)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def create_app(
    settings: Settings,
    on_started: Callable[[], None] | None = None,
    meter_provider: MeterProvider | None = None,
) -> FastAPI:
    edge = EdgeServer(settings, meter_provider)

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

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if 400 <= exc.status_code < 500:  # the client's fault: counted, and logged rate-limited
            where = f"{request.method} {request.url.path}"
            edge.client_errors.report(f"HTTP_{exc.status_code}", f"{where}: {exc.detail}")
        return await http_exception_handler(request, exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        edge.client_errors.report("HTTP_422", f"{request.method} {request.url.path}: invalid request")
        return await request_validation_exception_handler(request, exc)

    def authorized(session_id: str, authorization: str | None, check_expiry: bool = True):
        session = edge.sessions.get(session_id)
        try:
            edge.tokens.verify(_bearer(authorization), session_id, check_expiry)
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
            ice_servers=[s.model_dump(exclude_none=True) for s in session.ice_servers],
            limits={
                "chunk_ms": settings.limits.chunk_ms,
                "max_text_bytes": settings.limits.max_text_bytes_per_chunk,
            },
        )

    @app.post("/api/sessions/{session_id}/offer", response_model=Answer)
    async def offer(session_id: str, request: Request, authorization: str | None = Header(None)) -> Answer:
        session = authorized(session_id, authorization)
        if not _awaits_offer(session):
            raise HTTPException(409, f"session {session_id} already has a peer connection")
        cfg = settings.edge
        raw = await _read_body(request, cfg.max_sdp_bytes + 1024)
        try:
            desc = parse_offer(raw, cfg.max_sdp_bytes, cfg.max_json_depth)
        except SdpError as exc:
            raise HTTPException(400, f"bad offer: {exc}") from None
        except Exception as exc:  # still the body's fault: a 400, never a 500
            raise HTTPException(400, f"bad offer: unreadable ({type(exc).__name__})") from None
        # reading the body yielded: another offer may have won the session, or the reaper closed it
        if session.closed:
            raise HTTPException(404, f"unknown session {session_id} (closed or reaped)")
        if not _awaits_offer(session):
            raise HTTPException(409, f"session {session_id} already has a peer connection")
        try:
            answer = await session.accept_offer(desc)
        except NoCandidates as exc:  # the edge's lack, not the offer's fault: try again later
            await edge.close(session_id, "no ICE candidate")
            raise HTTPException(503, str(exc), headers={"Retry-After": "5"}) from None
        except Exception as exc:
            # aiortc refused an offer the checks let through: release its peer connection now
            # rather than at the reaper, and tell the client why
            log.debug("offer for %s could not be negotiated", session_id, exc_info=True)
            await edge.close(session_id, "the offer could not be negotiated")
            raise HTTPException(400, f"the offer could not be negotiated: {_reason(exc)}") from None
        return Answer(sdp=answer.sdp, type=answer.type)

    @app.delete("/api/sessions/{session_id}", status_code=204)
    async def close_session(session_id: str, authorization: str | None = Header(None)) -> Response:
        authorized(session_id, authorization, check_expiry=False)  # hanging up a long call works
        await edge.close(session_id, "closed by the client")
        return Response(status_code=204)

    @app.get("/api/sessions/{session_id}/timing")
    async def timing(session_id: str, authorization: str | None = Header(None)) -> dict[str, object]:
        """The call's latency waterfall: its last minute of micro-turns, hop by hop (the session's own
        token, or ``edge.debug_token`` for an operator: ``microturn trace``)."""
        debug = settings.edge.debug_token
        if debug and hmac.compare_digest((_bearer(authorization) or "").encode(), debug.encode()):
            session = edge.sessions.get(session_id)
            if session is None:
                raise HTTPException(404, f"unknown session {session_id} (closed or reaped)")
        else:
            session = authorized(session_id, authorization, check_expiry=False)
        return {"session_id": session_id, "model_version": session.route.version or (
            session.grpc.accepted.model_version if session.grpc and session.grpc.accepted else ""),
            **waterfall(list(session.waterfall))}  # fmt: skip

    @app.get("/healthz", response_class=PlainTextResponse)
    async def healthz() -> str:
        epoch = edge.routing.epoch
        routing = f", routing epoch {epoch}" if epoch is not None else ""
        return f"ok {len(edge.sessions)}/{settings.edge.max_sessions} sessions{routing}\n"

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/")
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
