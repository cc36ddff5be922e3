"""`warbler search` and `/search` in `warbler chat`, run as processes against a real gateway."""

from __future__ import annotations

import asyncio
import os

import pytest

from client import WarblerClient
from tests.client.test_chat_cli import PASSWORD, Terminal, warbler_command

pytestmark = pytest.mark.ray

REMINDERS = 12


async def _conversation(gateway_url: str, uid: str, word: str) -> int:
    """Alice writes to Bob: a lunch message, then REMINDERS reminders, all holding ``word``."""
    async with WarblerClient(gateway_url) as alice, WarblerClient(gateway_url) as bob:
        await bob.register(f"bob_{uid}", PASSWORD)
        await alice.register(f"alice_{uid}", PASSWORD)
        await alice.connect()
        first = await alice.send(f"Lunch with {word} today?", to_user=bob.user_id)
        for i in range(REMINDERS):
            await alice.send(f"{word} reminder {i}", conversation_id=first.conversation_id)
        return first.conversation_id


def _env() -> dict[str, str]:
    return {**os.environ, "COLUMNS": "160", "TERM": "dumb", "WARBLER_PASSWORD": PASSWORD}


async def _search(gateway_url: str, user: str, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *warbler_command(),
        "search",
        *args,
        "--url",
        gateway_url,
        "--user",
        user,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=_env(),
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def _hit_lines(out: str, word: str) -> list[str]:
    return [line for line in out.splitlines() if word in line]


async def test_warbler_search_prints_a_table_of_hits(gateway_url: str, uid: str) -> None:
    word = f"lychee{uid}"
    conv = await _conversation(gateway_url, uid, word)

    code, out = await _search(gateway_url, f"bob_{uid}", word, "--limit", "3")
    assert code == 0, out
    header = next(line for line in out.splitlines() if "snippet" in line)
    for column in ("conversation", "seq", "sender", "time"):
        assert column in header, out
    lines = _hit_lines(out, word)
    assert len(lines) == 3, out
    for line, n in zip(lines, (11, 10, 9), strict=True):
        assert f"#{conv} @alice_{uid}" in line and f"reminder {n}" in line, out
        assert f"alice_{uid}" in line.split(f"@alice_{uid}", 1)[1], line  # the sender column
    assert "3 hits, newest first; there are more" in out

    # Every word required, any case, in one conversation.
    code, out = await _search(gateway_url, f"bob_{uid}", f"LUNCH {word}", "-c", str(conv))
    assert code == 0, out
    assert [("Lunch with" in line) for line in _hit_lines(out, word)] == [True]
    assert "1 hit, newest first" in out and "there are more" not in out

    code, out = await _search(gateway_url, f"bob_{uid}", word, "-n", "50")
    assert code == 0 and len(_hit_lines(out, word)) == REMINDERS + 1, out

    code, out = await _search(gateway_url, f"bob_{uid}", f"nothing{uid}")
    assert code == 0 and "no messages found" in out, out


async def test_warbler_search_refuses_bad_input_clearly(gateway_url: str, uid: str) -> None:
    async with WarblerClient(gateway_url) as carol:
        await carol.register(f"carol_{uid}", PASSWORD)
    code, out = await _search(gateway_url, f"carol_{uid}", "?!")
    assert code == 1 and "validation_error" in out and "no words" in out, out
    code, out = await _search(gateway_url, f"carol_{uid}", "kiwi", "--limit", "0")
    assert code == 2 and "--limit" in out, out  # typer's usage error, before any request
    code, out = await _search(gateway_url, f"nobody_{uid}", "kiwi")
    assert code == 2 and "unauthenticated" in out, out


async def test_chat_search_pages_with_more(gateway_url: str, uid: str) -> None:
    word = f"durian{uid}"
    conv = await _conversation(gateway_url, uid, word)
    proc = await asyncio.create_subprocess_exec(
        *warbler_command(),
        "chat",
        "--url",
        gateway_url,
        "--user",
        f"bob_{uid}",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=_env(),
    )
    term = Terminal(proc)
    try:
        await term.expect(f"logged in as bob_{uid}", timeout_s=60)
        # The conversation list comes first, and its last-message column holds the word too.
        await term.expect("type /help for commands")
        start = len(term.output)
        await term.line(f"/search {word}")
        await term.expect("/more for older hits")
        first_page = _hit_lines(term.output[start:], f"{word} reminder")
        assert len(first_page) == 10 and f"#{conv} @alice_{uid}" in first_page[0], term.output
        await term.line("/more")
        await term.expect("Lunch with")
        await term.line("/more")
        await term.expect("no more hits")
        # The rest of the line is the query as typed: a quote is no parse error.
        await term.line(f"/search #{conv} don't {word}")
        await term.expect("no messages found")
        await term.line("/search")
        await term.expect("usage: /search")
        await term.line("/quit")
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
