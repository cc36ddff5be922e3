"""The FastAPI application of one gateway replica: REST under /v1, the WebSocket at /v1/ws,
health, OpenAPI at /docs, and the web chat page at /."""

from __future__ import annotations

import logging
import re
from importlib import resources
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.staticfiles import StaticFiles

from actors.bot_knowledge import MAX_DOCUMENT_BYTES
from serve.context import GatewayContext
from serve.middleware import EdgeLimits
from serve.problems import install_problem_handlers, install_problem_openapi
from serve.request_ids import RequestIds
from serve.routes import auth, bots, conversations, health, search, users, ws
from warbler.protocol import API_PREFIX, PROTOCOL_VERSION

logger = logging.getLogger(__name__)


def web_dir() -> Path | None:
    """The web chat's static files (``client/web``), if that package is installed."""
    try:
        path = Path(str(resources.files("client") / "web"))
    except ModuleNotFoundError:
        return None
    return path if (path / "index.html").is_file() else None


def create_api(ctx: GatewayContext) -> FastAPI:
    """The app for one replica, wired to its context."""
    app = FastAPI(
        title="Warbler",
        version=f"protocol {PROTOCOL_VERSION}",
        description=(
            "Instant messaging on Ray. REST under /v1; the WebSocket protocol at /v1/ws is "
            "documented in docs/protocol.md. Errors are RFC 9457 problem JSON, except what "
            "the ingress answers itself: a request line plus headers over ~31 KiB gets "
            "HAProxy's HTML 400, and no reachable replica a text/plain 500 (docs/protocol.md, "
            "Edge limits)."
        ),
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.ctx = ctx
    s = ctx.settings
    app.add_middleware(
        EdgeLimits,
        max_body=s.max_request_bytes,
        max_url=s.max_url_bytes,
        max_headers=s.max_header_bytes,
        # A knowledge-base document is a file, not a message: its own, larger cap.
        large_bodies=[
            ("PUT", re.compile(rf"{API_PREFIX}/bots/[^/]+/documents/[^/]+$"), MAX_DOCUMENT_BYTES)
        ],
    )
    # Added last, so outermost: the edge limits' refusals carry the request id too.
    app.add_middleware(RequestIds)
    install_problem_handlers(app)
    install_problem_openapi(app)
    v1 = APIRouter(prefix=API_PREFIX)
    for router in (
        auth.router,
        users.router,
        conversations.router,
        search.router,
        bots.router,
        ws.router,
    ):
        v1.include_router(router)
    app.include_router(v1)
    app.include_router(health.router)
    static = web_dir()
    if static is not None:
        app.mount("/", StaticFiles(directory=static, html=True), name="web")
    else:
        logger.info("client/web not found; serving the API only")
    return app
