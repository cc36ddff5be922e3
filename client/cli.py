"""`warbler chat`: the terminal client, registered into the `warbler` command."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from collections.abc import AsyncIterator

import typer
from rich.console import Console

from client.chat import ChatApp
from client.client import WarblerClient
from client.search_table import hit_names, hits_table
from warbler.errors import ErrorCode, WarblerError
from warbler.protocol import SEARCH_LIMIT_MAX, SearchHitPublic

DEFAULT_URL = "http://127.0.0.1:8000"


async def _stdin_lines() -> AsyncIterator[str]:
    # A daemon thread reads stdin so the event printer keeps running (ttys and pipes alike) and
    # a blocked read never holds up exit, as the default executor's threads would.
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str] = asyncio.Queue()

    def pump() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(queue.put_nowait, line)
        loop.call_soon_threadsafe(queue.put_nowait, "")

    threading.Thread(target=pump, name="stdin", daemon=True).start()
    while line := await queue.get():
        yield line


async def _chat(
    url: str, username: str, password: str, register: bool, display_name: str | None
) -> None:
    console = Console(highlight=False)
    async with WarblerClient(url) as client:
        if register:
            await client.register(username, password, display_name)
        else:
            await client.login(username, password)
        await client.connect()
        # A terminal echoes each typed line; the chat prints it again once sent.
        echoes = sys.stdin.isatty() and console.is_terminal
        await ChatApp(client, console, erase_echo=echoes).run(_stdin_lines())


def chat(
    url: str = typer.Option(DEFAULT_URL, envvar="WARBLER_URL", help="The gateway's base URL."),
    username: str = typer.Option(..., "--user", "-u", prompt=True, envvar="WARBLER_USER"),
    password: str = typer.Option(
        ..., prompt=True, hide_input=True, envvar="WARBLER_PASSWORD", help="Prompted if absent."
    ),
    register: bool = typer.Option(False, "--register", help="Create the account first."),
    display_name: str | None = typer.Option(None, help="Display name when registering."),
) -> None:
    """Chat in the terminal: list conversations, open one, send; /help inside for commands."""
    try:
        asyncio.run(_chat(url, username, password, register, display_name))
    except WarblerError as exc:
        err = Console(stderr=True)
        err.print(f"[red]{exc.code.value}:[/red] {exc.message}", highlight=False)
        if exc.code is ErrorCode.UNAUTHENTICATED and not register:
            err.print("[dim]new here? add --register to create the account[/dim]")
        raise typer.Exit(2 if exc.code is ErrorCode.UNAUTHENTICATED else 1) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


async def _send(
    url: str, username: str, password: str, text: str, to: str | None, conversation: int | None
) -> None:
    async with WarblerClient(url) as client:
        await client.login(username, password)
        sent = await client.send(text, conversation_id=conversation, to_user=to)
        Console().print(
            f"sent: conversation {sent.conversation_id}, seq {sent.seq}", highlight=False
        )


def send(
    text: str = typer.Argument(..., help="The message."),
    to: str | None = typer.Option(None, "--to", help="Username of the recipient."),
    conversation: int | None = typer.Option(None, "--conversation", "-c", help="Conversation id."),
    url: str = typer.Option(DEFAULT_URL, envvar="WARBLER_URL", help="The gateway's base URL."),
    username: str = typer.Option(..., "--user", "-u", prompt=True, envvar="WARBLER_USER"),
    password: str = typer.Option(..., prompt=True, hide_input=True, envvar="WARBLER_PASSWORD"),
) -> None:
    """Send one message (to a user with --to, or into a conversation with -c) and print its seq."""
    if (to is None) == (conversation is None):
        raise typer.BadParameter("give exactly one of --to and --conversation")
    try:
        asyncio.run(_send(url, username, password, text, to, conversation))
    except WarblerError as exc:
        Console(stderr=True).print(f"[red]{exc.code.value}:[/red] {exc.message}", highlight=False)
        raise typer.Exit(2 if exc.code is ErrorCode.UNAUTHENTICATED else 1) from None


async def _search(
    url: str, username: str, password: str, query: str, conversation: int | None, limit: int
) -> None:
    console = Console(highlight=False)
    async with WarblerClient(url) as client:
        await client.login(username, password)
        hits: list[SearchHitPublic] = []
        more = False
        # Pages of up to 100 (the server's cap) until `limit` hits; one more tells whether
        # there are others beyond them.
        found = client.iter_search(
            query, conversation_id=conversation, page=min(limit + 1, SEARCH_LIMIT_MAX)
        )
        async with contextlib.aclosing(found):
            async for hit in found:
                if len(hits) == limit:
                    more = True
                    break
                hits.append(hit)
        if not hits:
            console.print("no messages found", highlight=False)
            return
        conversations, senders = await hit_names(client, hits)
        console.print(hits_table(hits, conversations=conversations, senders=senders))
        shown = f"{len(hits)} hit{'s' if len(hits) != 1 else ''}, newest first"
        tail = "; there are more (raise --limit, or narrow with --conversation)" if more else ""
        console.print(f"[dim]{shown}{tail}[/dim]", highlight=False)


def search(
    query: str = typer.Argument(..., help="Words to find (all of them, whole words, any case)."),
    conversation: int | None = typer.Option(
        None, "--conversation", "-c", min=1, help="Only this conversation id."
    ),
    limit: int = typer.Option(20, "--limit", "-n", min=1, max=10_000, help="Hits to show."),
    url: str = typer.Option(DEFAULT_URL, envvar="WARBLER_URL", help="The gateway's base URL."),
    username: str = typer.Option(..., "--user", "-u", prompt=True, envvar="WARBLER_USER"),
    password: str = typer.Option(..., prompt=True, hide_input=True, envvar="WARBLER_PASSWORD"),
) -> None:
    """Search your message history and print the hits: conversation, seq, sender, time, snippet."""
    try:
        asyncio.run(_search(url, username, password, query, conversation, limit))
    except WarblerError as exc:
        Console(stderr=True).print(f"[red]{exc.code.value}:[/red] {exc.message}", highlight=False)
        raise typer.Exit(2 if exc.code is ErrorCode.UNAUTHENTICATED else 1) from None


def register(app: typer.Typer) -> None:
    """Add the client's commands to the `warbler` CLI."""
    app.command("chat")(chat)
    app.command("send")(send)
    app.command("search")(search)
