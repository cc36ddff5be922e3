"""`warbler bot ...`: create a bot, feed its knowledge base, hand a conversation back."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import typer
from rich.console import Console

from client.bots import BotsClient
from client.rest import RestClient
from warbler.errors import WarblerError
from warbler.protocol import BotCreate, BotProviderConfig

DEFAULT_URL = "http://127.0.0.1:8000"
bot_app = typer.Typer(help="ChatAI bots: create them, give them documents, hand back.")
_T = TypeVar("_T")

_URL = typer.Option(DEFAULT_URL, envvar="WARBLER_URL", help="The gateway's base URL.")
_USER = typer.Option(..., "--user", "-u", prompt=True, envvar="WARBLER_USER", help="The owner.")
_PASSWORD = typer.Option(..., prompt=True, hide_input=True, envvar="WARBLER_PASSWORD")
_FILES = typer.Argument(..., help="Markdown, HTML or text files.", exists=True)


def _run(url: str, user: str, password: str, work: Callable[[BotsClient], Awaitable[_T]]) -> _T:
    async def go() -> _T:
        rest = RestClient(url)
        bots = BotsClient(rest)
        try:
            await rest.login(user, password)
            return await work(bots)
        finally:
            await bots.aclose()
            await rest.aclose()

    try:
        return asyncio.run(go())
    except WarblerError as exc:
        Console(stderr=True).print(f"[red]{exc.code.value}:[/red] {exc.message}", highlight=False)
        raise typer.Exit(1) from None


@bot_app.command("create")
def create(
    name: str = typer.Argument(..., help="The bot's username (customers DM it by this name)."),
    display_name: str | None = typer.Option(None, help="Shown name (default: the username)."),
    avatar: str = typer.Option("🤖", help="A short avatar text or emoji."),
    prompt: str = typer.Option("", "--prompt", help="System prompt (for a generative provider)."),
    openai_url: str | None = typer.Option(
        None, help="An OpenAI-compatible endpoint (…/v1); default: offline extractive answers."
    ),
    model: str = typer.Option("gpt-4o-mini", help="The model name for --openai-url."),
    api_key: str = typer.Option("", envvar="WARBLER_BOT_API_KEY", help="Key for --openai-url."),
    support_group: int | None = typer.Option(
        None, help="Id of a group you manage whose members are the human agents."
    ),
    answer_all: bool = typer.Option(False, help="In groups, answer every message (not only @)."),
    budget: int = typer.Option(0, help="Tokens the bot may spend (0: no limit)."),
    url: str = _URL,
    user: str = _USER,
    password: str = _PASSWORD,
) -> None:
    """Create a bot owned by you."""
    provider = (
        BotProviderConfig(kind="openai", url=openai_url, model=model, api_key=api_key or None)
        if openai_url
        else BotProviderConfig()
    )
    body = BotCreate(
        username=name,
        display_name=display_name,
        avatar=avatar,
        system_prompt=prompt,
        provider=provider,
        support_group_id=support_group,
        answer_all=answer_all,
        token_budget=budget,
    )
    bot = _run(url, user, password, lambda c: c.create(body))
    Console().print(
        f"bot {bot.id} created: @{bot.username} (user id {bot.user_id}, {bot.provider})",
        highlight=False,
    )


@bot_app.command("upload")
def upload(
    bot: str = typer.Argument(..., help="The bot's username or id."),
    files: list[Path] = _FILES,
    url: str = _URL,
    user: str = _USER,
    password: str = _PASSWORD,
) -> None:
    """Add (or re-index) documents in a bot's knowledge base."""

    async def work(client: BotsClient) -> list[str]:
        target = await client.find(bot)
        lines = []
        for path in files:
            doc = await client.upload(target.id, path.name, path.read_bytes())
            lines.append(f"{doc.name}: {doc.chunks} passages ({doc.chars} characters)")
        return lines

    for line in _run(url, user, password, work):
        Console().print(line, highlight=False)


@bot_app.command("list")
def list_bots(url: str = _URL, user: str = _USER, password: str = _PASSWORD) -> None:
    """Your bots and what they have spent."""
    for b in _run(url, user, password, lambda c: c.list_bots()):
        budget = f"/{b.token_budget}" if b.token_budget else ""
        Console().print(
            f"{b.id} @{b.username} {b.avatar} {b.provider} tokens {b.tokens_used}{budget}",
            highlight=False,
        )


@bot_app.command("handback")
def handback(
    conversation: int = typer.Argument(..., help="The handed-off (or support) conversation."),
    url: str = _URL,
    user: str = _USER,
    password: str = _PASSWORD,
) -> None:
    """As an agent: give a conversation back to its bot."""
    state = _run(url, user, password, lambda c: c.hand_back(conversation))
    Console().print(f"conversation {state.conversation_id} is back with its bot", highlight=False)


def register(app: typer.Typer) -> None:
    """Add `warbler bot` to the CLI."""
    app.add_typer(bot_app, name="bot")
