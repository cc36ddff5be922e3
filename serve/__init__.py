"""Warbler's gateway: a Ray Serve deployment with a FastAPI app (REST + WebSocket)."""
