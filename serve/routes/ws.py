"""/v1/ws: the WebSocket endpoint (protocol in docs/protocol.md)."""

from __future__ import annotations

from fastapi import APIRouter, WebSocket

from serve.websocket import SocketSession

router = APIRouter()


@router.websocket("/ws")
async def websocket(websocket: WebSocket) -> None:
    """One client socket: hello, then frames both ways until either side closes."""
    await SocketSession(websocket.app.state.ctx, websocket).run()
