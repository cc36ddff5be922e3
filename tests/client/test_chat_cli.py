"""`warbler chat` driven through stdin/stdout as a user would, against a real gateway."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from client import WarblerClient
from warbler.protocol import MessageFrame

pytestmark = pytest.mark.ray

PASSWORD = "correct horse battery"


class Terminal:
    """A `warbler chat` process: write lines, wait for text in its output."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.output = ""

    async def line(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode() + b"\n")
        await self.proc.stdin.drain()

    async def expect(self, text: str, timeout_s: float = 30.0) -> None:
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout_s):
            while text not in self.output:
                chunk = await self.proc.stdout.readline()
                if not chunk:
                    raise AssertionError(f"chat exited before {text!r}:\n{self.output}")
                self.output += chunk.decode()


def warbler_command() -> list[str]:
    script = Path(sys.executable).with_name("warbler")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from warbler.cli import app; app()"]


async def test_chat_registers_opens_a_direct_chat_sends_and_receives(
    gateway_url: str, uid: str
) -> None:
    async with WarblerClient(gateway_url) as bob:
        await bob.register(f"bob_{uid}", PASSWORD)
        await bob.connect()
        env = {**os.environ, "COLUMNS": "160", "TERM": "dumb", "WARBLER_PASSWORD": PASSWORD}
        proc = await asyncio.create_subprocess_exec(
            *warbler_command(),
            "chat",
            "--url",
            gateway_url,
            "--user",
            f"alice_{uid}",
            "--register",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
        )
        term = Terminal(proc)
        try:
            await term.expect(f"logged in as alice_{uid}", timeout_s=60)
            await term.line(f"/dm bob_{uid}")
            await term.expect(f"── @bob_{uid}")
            await term.line("hello from the terminal <b>")
            got = await bob.next_event(30)
            while not isinstance(got, MessageFrame):
                got = await bob.next_event(30)
            assert got.body == "hello from the terminal <b>"

            await bob.send("hi terminal [bold]", conversation_id=got.conversation_id)
            await term.expect(f"bob_{uid}: hi terminal [bold]")

            await term.line(f"/group 'Night shift' bob_{uid}")
            await term.expect("created group Night shift")
            await term.line("/members")
            await term.expect(f"bob_{uid} member")
            await term.line("/list")
            await term.expect("Night shift")
            await term.line("/open nobody_at_all_here")
            await term.expect("error (not_found)")
            await term.line("/quit")
            assert await asyncio.wait_for(proc.wait(), 30) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def test_chat_with_a_wrong_password_exits_with_an_error(gateway_url: str, uid: str) -> None:
    env = {**os.environ, "WARBLER_PASSWORD": "not the password"}
    proc = await asyncio.create_subprocess_exec(
        *warbler_command(),
        "chat",
        "--url",
        gateway_url,
        "--user",
        f"ghost_{uid}",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    assert b"unauthenticated" in out
