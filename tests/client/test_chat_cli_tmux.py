"""`warbler chat` in a real terminal (tmux), as a user sees it: the terminal echoes what is typed,
so this is where a sent line could show twice, and where /help and /list are read by eye."""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import subprocess
import time

import pytest

from client import WarblerClient
from tests.client.test_chat_cli import PASSWORD, warbler_command
from warbler.protocol import MessageFrame

TMUX = shutil.which("tmux")

pytestmark = [
    pytest.mark.ray,
    pytest.mark.skipif(TMUX is None, reason="tmux is missing (apt-get install -y tmux)"),
]


class Pane:
    """One tmux session on a private server (``-L``): only this test's tmux is touched."""

    def __init__(self, name: str) -> None:
        assert TMUX is not None
        self.base = [TMUX, "-L", name]
        self.target = "chat"

    def start(self, command: list[str], env: dict[str, str]) -> None:
        line = " ".join(shlex.quote(part) for part in command)
        # tmux runs the command through the shell with the server's environment; pass ours.
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        subprocess.run(
            [
                *self.base,
                "-f",
                "/dev/null",
                "new-session",
                "-d",
                "-s",
                self.target,
                "-x",
                "150",
                "-y",
                "60",
                f"env {exports} {line}; sleep 30",
            ],
            check=True,
            timeout=30,
        )

    def type(self, text: str) -> None:
        subprocess.run(
            [*self.base, "send-keys", "-t", self.target, "-l", text], check=True, timeout=10
        )
        enter = [*self.base, "send-keys", "-t", self.target, "Enter"]
        subprocess.run(enter, check=True, timeout=10)

    def screen(self) -> str:
        done = subprocess.run(
            [*self.base, "capture-pane", "-p", "-J", "-S", "-500", "-t", self.target],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
        return done.stdout

    async def wait_for(self, text: str, timeout_s: float = 30.0, count: int = 1) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            screen = self.screen()
            if screen.count(text) >= count:
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} (x{count}) not on screen:\n{screen}")
            await asyncio.sleep(0.2)

    def stop(self) -> None:
        subprocess.run([*self.base, "kill-server"], capture_output=True, timeout=10)


def unread_of(screen: str, name: str) -> str:
    """The unread cell of the last /list row naming ``name``."""
    rows = [line for line in screen.splitlines() if name in line and "│" in line]
    assert rows, screen
    cells = [c.strip() for c in rows[-1].split("│")]
    return cells[2]


async def test_chat_in_a_terminal(gateway_url: str, uid: str) -> None:
    alice, bob_name = f"alice_{uid}", f"bob_{uid}"
    pane = Pane(f"warbler-test-{uid}")
    async with WarblerClient(gateway_url) as bob:
        await bob.register(bob_name, PASSWORD)
        await bob.connect()
        env = {
            "WARBLER_PASSWORD": PASSWORD,
            "TERM": "xterm-256color",
            "PATH": os.environ.get("PATH", ""),
            "HOME": os.environ.get("HOME", "/tmp"),
        }
        pane.start(
            [*warbler_command(), "chat", "--url", gateway_url, "--user", alice, "--register"], env
        )
        try:
            await pane.wait_for("type /help for commands", timeout_s=90)

            # /help keeps every argument name, in aligned columns.
            pane.type("/help")
            screen = await pane.wait_for("anything else is sent")
            assert "/group <title> [user ...]" in screen
            assert "/add <user> [user ...]" in screen
            assert "/history [n]" in screen
            starts = {
                line.index(text)
                for line in screen.splitlines()
                for text in ("conversations with unread", "the n messages before", "this text")
                if text in line
            }
            assert len(starts) == 1, screen

            pane.type(f"/dm {bob_name}")
            await pane.wait_for(f"── @{bob_name}")
            # Each sent line shows once: formatted, not also as the terminal's echo.
            pane.type("first line from tmux")
            await pane.wait_for(f"{alice}: first line from tmux")
            pane.type("second line from tmux")
            screen = await pane.wait_for(f"{alice}: second line from tmux")
            assert screen.count("first line from tmux") == 1, screen
            assert screen.count("second line from tmux") == 1, screen
            got = await bob.next_event(30)
            while not isinstance(got, MessageFrame):
                got = await bob.next_event(30)

            # Your own messages are not unread.
            pane.type("/list")
            screen = await pane.wait_for("last message")
            assert unread_of(screen, f"@{bob_name}") == "", screen

            # Bob answers; alice has the chat open, so it is read at once.
            await bob.send("hi from bob", conversation_id=got.conversation_id)
            await pane.wait_for(f"{bob_name}: hi from bob")

            # /history goes back from the oldest line shown: nothing on screen again.
            pane.type("/history")
            screen = await pane.wait_for("(no earlier messages)", count=2)
            assert screen.count("first line from tmux") == 1, screen
            assert screen.count("hi from bob") == 1, screen
            pane.type("/list")
            screen = await pane.wait_for("last message", count=2)
            assert unread_of(screen, f"@{bob_name}") == "", screen
            pane.type("/quit")
        finally:
            pane.stop()
