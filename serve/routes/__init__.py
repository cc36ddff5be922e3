"""REST and WebSocket routes: parse, call one handler, shape the answer. No logic of their own."""
