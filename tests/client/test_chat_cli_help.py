"""What the help screens show: `warbler --help` (flags without a value type) and the chat's
`/help` (argument names kept, columns aligned). No gateway needed."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess

from rich.console import Console

from client.chat import HELP, ChatApp
from client.client import WarblerClient
from tests.client.test_chat_cli import warbler_command


def run_help(*args: str) -> str:
    env = {**os.environ, "COLUMNS": "120", "TERM": "dumb"}
    done = subprocess.run(
        [*warbler_command(), *args, "--help"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def option_line(text: str, flag: str) -> str:
    lines = [line for line in text.splitlines() if line.strip().startswith(flag)]
    assert lines, text
    return lines[0]


def test_warbler_help_shows_flags_as_flags() -> None:
    top = run_help()
    assert "<bool>" not in top
    for command in ("up", "down", "chat", "send", "search"):
        assert any(line.split()[:1] == [command] for line in top.splitlines()), top
    up = run_help("up")
    assert "<bool>" not in up, up
    assert option_line(up, "-d, --detach").split()[:3] == ["-d,", "--detach", "Leave"]
    assert option_line(up, "--port").split()[:2] == ["--port", "<int>"]  # takes a value
    chat = run_help("chat")
    assert "<bool>" not in chat, chat
    assert option_line(chat, "--register").split()[:2] == ["--register", "Create"]


def test_chat_help_keeps_arguments_and_aligns_columns() -> None:
    out = io.StringIO()
    console = Console(file=out, width=120, color_system=None, force_terminal=False)
    app = ChatApp(WarblerClient("http://127.0.0.1:9"), console)
    asyncio.run(app.handle("/help"))
    text = out.getvalue()
    columns = set()
    for command, description in HELP:
        line = next((x for x in text.splitlines() if description in x), None)
        assert line is not None, text
        assert line.strip().startswith(command + " "), line  # "<user ...>", "[n]" kept
        columns.add(line.index(description))
    assert len(columns) == 1, text
    assert "/group <title> [user ...]" in text and "/history [n]" in text
