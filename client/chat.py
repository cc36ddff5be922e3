"""The terminal chat behind `warbler chat`: a line-oriented REPL with /commands on the SDK."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

from rich.console import Console
from rich.markup import escape
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from client.bots import bot_answer, sources_line
from client.client import WarblerClient
from client.events import ConnectionEvent, Event
from client.search_table import hits_table
from warbler.errors import WarblerError
from warbler.protocol import (
    ConversationEventFrame,
    ConversationPublic,
    MessageDeltaFrame,
    MessageFrame,
    MessagePublic,
    ReceiptFrame,
    TypingEventFrame,
)

logger = logging.getLogger(__name__)

# (command, what it does): printed as a two-column grid of plain text, so the <...> and [...]
# argument names are never taken for rich markup.
HELP = (
    ("/list", "conversations with unread counts"),
    ("/open <#id|username>", "open a conversation (by id, or the direct chat with a user)"),
    ("/dm <username>", "open the direct chat with a user (always a username)"),
    ("/group <title> [user ...]", "create a group (title in quotes if it has spaces)"),
    ("/add <user> [user ...]", "add members to the open group"),
    ("/members", "members of the open conversation"),
    ("/history [n]", "the n messages before the oldest shown (default 20)"),
    ("/search [#id] <words>", "find messages with all these words (in one conversation: #id)"),
    ("/more", "the next page of hits of the last /search"),
    ("/human", "ask the bot of this conversation for a human agent"),
    ("/help", "this text"),
    ("/quit", "leave (Ctrl-D works too)"),
)
# Cursor up one line, erase it: the terminal's echo of a sent line, which comes back formatted.
_ERASE_ECHO = "\x1b[1A\x1b[2K"
# Commands that take the rest of the line as it is: search words may hold quotes ("don't").
_RAW_ARGUMENT = {"search"}
_SEARCH_PAGE = 10


class ChatApp:
    """The REPL: reads lines, runs /commands, sends text, prints live events as they come.

    Example::

        app = ChatApp(client, Console())
        await app.run(stdin_lines())
    """

    def __init__(
        self, client: WarblerClient, console: Console, *, erase_echo: bool = False
    ) -> None:
        self.client = client
        self.console = console
        # True when the lines come from a terminal that echoes them (see _ERASE_ECHO).
        self.erase_echo = erase_echo
        self.current: int | None = None
        self._oldest_shown: int | None = None
        self._names: dict[int, str] = {}
        self._titles: dict[int, str] = {}
        # Per conversation, the (seq, sender) of the last message printed.
        self._printed: dict[int, tuple[int, int]] = {}
        # The last /search (query, conversation filter) and its next page's cursor, for /more.
        self._search: tuple[str, int | None] | None = None
        self._search_next: str | None = None
        self._commands: dict[str, Callable[[list[str]], Awaitable[None]]] = {
            "list": self._cmd_list,
            "open": self._cmd_open,
            "dm": self._cmd_dm,
            "group": self._cmd_group,
            "add": self._cmd_add,
            "members": self._cmd_members,
            "history": self._cmd_history,
            "search": self._cmd_search,
            "more": self._cmd_more,
            "help": self._cmd_help,
            "human": self._cmd_human,
        }

    async def run(self, lines: AsyncIterator[str]) -> None:
        """Print the conversation list, then serve input lines until EOF or /quit."""
        me = self.client.user
        self._names[me.id] = me.username
        self.say(f"[green]logged in as[/green] [bold]{escape(me.username)}[/bold] (id {me.id})")
        events = asyncio.create_task(self._print_events(), name="chat-events")
        try:
            await self._cmd_list([])
            self.say("[dim]type /help for commands[/dim]")
            async for line in lines:
                line = line.strip()
                if not line:
                    continue
                if line in ("/quit", "/exit"):
                    break
                try:
                    await self.handle(line)
                except WarblerError as exc:
                    self.say(f"[red]error ({exc.code.value}):[/red] {escape(exc.message)}")
        finally:
            events.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await events

    def say(self, markup: str) -> None:
        """Print one line of rich markup (user text must be escaped by the caller)."""
        self.console.print(markup, highlight=False, soft_wrap=True)

    async def handle(self, line: str) -> None:
        """Run one input line: a /command, or text for the open conversation."""
        if line.startswith("/"):
            head, _, rest = line[1:].partition(" ")
            if head in _RAW_ARGUMENT:
                await self._commands[head]([rest.strip()] if rest.strip() else [])
                return
            try:
                name, *args = shlex.split(line[1:])
            except ValueError as exc:
                self.say(f"[red]cannot parse:[/red] {escape(str(exc))}")
                return
            command = self._commands.get(name)
            if command is None:
                self.say(f"[red]unknown command[/red] /{escape(name)}; try /help")
                return
            await command(args)
            return
        if self.current is None:
            self.say("[yellow]open a conversation first:[/yellow] /list, /open <#id|username>")
            return
        # The message is printed when it comes back through the stream, in seq order; the
        # terminal's echo of the typed line goes, or the line would show twice.
        if self.erase_echo:
            self.console.file.write(_ERASE_ECHO)
            self.console.file.flush()
        await self.client.send(line, conversation_id=self.current)

    # ---- names ------------------------------------------------------------------------------

    async def _name(self, user_id: int) -> str:
        if user_id not in self._names:
            for user in await self.client.users([user_id]):
                self._names[user.id] = user.username
        return self._names.get(user_id, f"user{user_id}")

    async def _title(self, conversation_id: int) -> str:
        if conversation_id not in self._titles:
            await self._remember(await self.client.get_conversation(conversation_id))
        return self._titles.get(conversation_id, f"#{conversation_id}")

    async def _remember(self, conv: ConversationPublic) -> None:
        if conv.kind == "group":
            self._titles[conv.id] = conv.title or f"group {conv.id}"
            return
        peers = [m.user_id for m in conv.members if m.user_id != self.client.user_id]
        self._titles[conv.id] = "@" + await self._name(peers[0]) if peers else "(direct)"

    # ---- printing ---------------------------------------------------------------------------

    async def _format(self, m: MessagePublic) -> str:
        when = m.created_at.astimezone().strftime("%H:%M")
        if m.kind == "system":
            return f"[dim]{when} · {escape(await self._describe_system(m.body))}[/dim]"
        who = await self._name(m.sender_id)
        style = "cyan" if m.sender_id == self.client.user_id else "magenta"
        answer = bot_answer(m.body)
        if answer is not None:  # ChatAI: a bot's message, with its badge and sources
            if answer.streaming:
                return f"[dim]{when} 🤖 {escape(who)} is answering…[/dim]"
            cite = sources_line(answer)
            tail = f"\n  [dim]{escape(cite)}[/dim]" if cite else ""
            human = "\n  [dim](/human: talk to a person)[/dim]" if not answer.handoff else ""
            return (
                f"[dim]{when}[/dim] [green]🤖 {escape(who)}[/green]: {escape(answer.text)}"
                f"{tail}{human if answer.sources else ''}"
            )
        text = m.body if isinstance(m.body, str) else str(m.body)
        return f"[dim]{when}[/dim] [{style}]{escape(who)}[/{style}]: {escape(text)}"

    async def _describe_system(self, body: object) -> str:
        """One line for a membership change. docs/protocol.md names the change in "event"
        (members_added, ...); the conversation entity writes "op" (added, ...): read both."""
        if not isinstance(body, dict):
            return str(body)

        async def name(key: str) -> str:
            value = body.get(key)
            return await self._name(value) if isinstance(value, int) else "someone"

        kind = body.get("event") or body.get("op")
        if kind == "created":
            return f"{await name('by')} created {body.get('title') or 'the group'!r}"
        if kind in ("members_added", "added"):
            ids = [i for i in body.get("user_ids") or [] if isinstance(i, int)]
            added = ", ".join([await self._name(i) for i in ids])
            return f"{await name('by')} added {added}"
        if kind in ("member_removed", "removed"):
            return f"{await name('by')} removed {await name('user_id')}"
        if kind in ("member_left", "left"):
            return f"{await name('user_id')} left"
        if kind == "renamed":
            return f"{await name('by')} renamed the group to {body.get('title')!r}"
        if kind in ("role_changed", "role"):
            return f"{await name('by')} made {await name('user_id')} {body.get('role')}"
        return "conversation updated"

    async def _print_events(self) -> None:
        try:
            async for event in self.client.events():
                await self._print_event(event)
        except WarblerError as exc:
            self.say(f"[red]disconnected for good:[/red] {escape(exc.message)}")

    async def _print_event(self, event: Event) -> None:
        if isinstance(event, MessageFrame):
            if event.conversation_id == self.current:
                self.say(await self._format(event))
                self._printed[event.conversation_id] = (event.seq, event.sender_id)
                if self._oldest_shown is None:
                    self._oldest_shown = event.seq  # /history goes back from here
                # Your own messages too: else /list counts them as unread.
                await self.client.mark_read(event.conversation_id, event.seq)
            elif event.sender_id != self.client.user_id:
                title = await self._title(event.conversation_id)
                line = await self._format(event)
                self.say(f"[yellow]#{event.conversation_id} {escape(title)}[/yellow] {line}")
        elif isinstance(event, MessageDeltaFrame):
            # A terminal line cannot grow: show the bot's answer once, when it is final.
            if event.final and event.body is not None and event.conversation_id == self.current:
                final = MessageFrame(
                    conversation_id=event.conversation_id,
                    seq=event.seq,
                    sender_id=event.sender_id,
                    kind="json",
                    body=event.body,
                    created_at=datetime.now(UTC),
                    client_msg_id="",
                )
                self.say(await self._format(final))
        elif isinstance(event, ReceiptFrame):
            mine = event.user_id == self.client.user_id
            # A member reading up to their own message just sent says nothing new.
            own = self._printed.get(event.conversation_id) == (event.read_seq, event.user_id)
            if event.conversation_id == self.current and not mine and not own:
                who = await self._name(event.user_id)
                self.say(f"[dim]✓ {escape(who)} read up to {event.read_seq}[/dim]")
        elif isinstance(event, TypingEventFrame):
            if event.conversation_id == self.current and event.active:
                self.say(f"[dim]{escape(await self._name(event.user_id))} is typing…[/dim]")
        elif isinstance(event, ConversationEventFrame):
            if event.conversation is not None:
                await self._remember(event.conversation)
            title = await self._title(event.conversation_id) if event.event != "removed" else ""
            self.say(
                f"[yellow]conversation #{event.conversation_id} {escape(title)}: "
                f"{event.event}[/yellow]"
            )
        elif isinstance(event, ConnectionEvent):
            if event.state == "disconnected":
                self.say(f"[red]connection lost[/red] [dim]({escape(event.reason)})[/dim]")
            elif event.state == "connected" and event.resumed:
                self.say("[green]reconnected[/green]")

    # ---- commands ---------------------------------------------------------------------------

    async def _cmd_help(self, args: list[str]) -> None:
        grid = Table.grid(padding=(0, 2))
        grid.add_column(no_wrap=True)
        grid.add_column()
        for command, text in HELP:
            grid.add_row(Text(command, style="bold"), Text(text))
        self.say("[bold]commands[/bold]")
        self.console.print(Padding(grid, (0, 0, 0, 2)))
        self.say("anything else is sent to the open conversation")

    async def _cmd_list(self, args: list[str]) -> None:
        convs = await self.client.list_conversations()
        if not convs:
            self.say("[dim]no conversations yet: /dm <username> or /group <title> <user ...>[/dim]")
            return
        peer_ids = [c.peer_id for c in convs if c.peer_id is not None]
        for user in await self.client.users([i for i in peer_ids if i not in self._names]):
            self._names[user.id] = user.username
        table = Table(title="conversations", show_edge=False, pad_edge=False)
        table.add_column("id", justify="right")
        table.add_column("name")
        table.add_column("unread", justify="right")
        table.add_column("last message")
        for c in convs:
            if c.kind == "group":
                self._titles[c.id] = c.title or f"group {c.id}"
            elif c.peer_id is not None:
                self._titles[c.id] = "@" + self._names.get(c.peer_id, str(c.peer_id))
            last = ""
            if c.last_message is not None:
                body = c.last_message.body
                last = body if isinstance(body, str) else await self._describe_system(body)
            table.add_row(
                f"#{c.id}",
                escape(self._titles.get(c.id, "")),
                f"[bold red]{c.unread}[/bold red]" if c.unread else "",
                escape(last[:60]),
            )
        self.console.print(table)

    async def _cmd_open(self, args: list[str]) -> None:
        if len(args) != 1:
            self.say("usage: /open <#id|username>")
            return
        target = args[0]
        if target.lstrip("#").isdigit():
            conv = await self.client.get_conversation(int(target.lstrip("#")))
        else:
            conv = await self.client.open_direct(target)
        await self._show(conv)

    async def _cmd_dm(self, args: list[str]) -> None:
        if len(args) != 1:
            self.say("usage: /dm <username>")
            return
        await self._show(await self.client.open_direct(args[0]))

    async def _show(self, conv: ConversationPublic) -> None:
        await self._remember(conv)
        self.current = conv.id
        self._oldest_shown = None
        self.say(f"[bold]── {escape(self._titles[conv.id])} (#{conv.id}) ──[/bold]")
        await self._show_history(20)
        if conv.last_seq:
            await self.client.mark_read(conv.id, conv.last_seq)

    async def _cmd_history(self, args: list[str]) -> None:
        if self.current is None:
            self.say("[yellow]open a conversation first[/yellow]")
            return
        n = int(args[0]) if args and args[0].isdigit() else 20
        await self._show_history(n)

    async def _show_history(self, n: int) -> None:
        assert self.current is not None
        page = await self.client.history(self.current, before_seq=self._oldest_shown, limit=n)
        if not page.messages:
            self.say("[dim](no earlier messages)[/dim]")
            return
        if page.has_more:
            self.say("[dim]… /history for older messages[/dim]")
        for m in page.messages:
            self.say(await self._format(m))
        self._oldest_shown = page.messages[0].seq

    async def _cmd_group(self, args: list[str]) -> None:
        if not args:
            self.say("usage: /group <title> [user ...]")
            return
        conv = await self.client.create_group(args[0], args[1:])
        await self._remember(conv)
        self.current = conv.id
        self._oldest_shown = None
        self.say(f"[green]created group[/green] [bold]{escape(args[0])}[/bold] (#{conv.id})")

    async def _cmd_add(self, args: list[str]) -> None:
        if self.current is None or not args:
            self.say("usage: open a group, then /add <user> [user ...]")
            return
        conv = await self.client.add_members(self.current, args)
        self.say(f"[green]members:[/green] {len(conv.members)}")

    async def _cmd_human(self, args: list[str]) -> None:
        # ChatAI: the bot hands off on "human" in a message, so the request is in the log.
        if self.current is None:
            self.say("[yellow]open a conversation first[/yellow]")
            return
        text = "I would like to talk to a human, please."
        await self.client.send(text, conversation_id=self.current)

    async def _cmd_members(self, args: list[str]) -> None:
        if self.current is None:
            self.say("[yellow]open a conversation first[/yellow]")
            return
        conv = await self.client.get_conversation(self.current)
        online = set((await self.client.presence([m.user_id for m in conv.members])).online)
        for m in conv.members:
            dot = "[green]●[/green]" if m.user_id in online else "[dim]○[/dim]"
            name = escape(await self._name(m.user_id))
            self.say(f"{dot} {name} [dim]{m.role}, read up to {m.read_seq}[/dim]")

    async def _cmd_search(self, args: list[str]) -> None:
        words = args[0] if args else ""
        conversation_id: int | None = None
        first, _, rest = words.partition(" ")
        if first.startswith("#") and first[1:].isdigit():
            conversation_id, words = int(first[1:]), rest.strip()
        if not words:
            self.say(escape("usage: /search [#id] <words>"))  # [#id] is no markup tag
            return
        self._search, self._search_next = (words, conversation_id), None
        await self._show_hits(None)

    async def _cmd_more(self, args: list[str]) -> None:
        if self._search is None:
            self.say(escape("usage: /search [#id] <words> first, then /more"))
            return
        if self._search_next is None:
            self.say("[dim]no more hits[/dim]")
            return
        await self._show_hits(self._search_next)

    async def _show_hits(self, cursor: str | None) -> None:
        assert self._search is not None
        words, conversation_id = self._search
        page = await self.client.search(
            words, conversation_id=conversation_id, limit=_SEARCH_PAGE, cursor=cursor
        )
        self._search_next = page.next
        if not page.hits:
            self.say(
                "[dim]no messages found[/dim]" if cursor is None else "[dim]no more hits[/dim]"
            )
            return
        missing = {h.sender_id for h in page.hits} - self._names.keys()
        for user in await self.client.users(sorted(missing)) if missing else []:
            self._names[user.id] = user.username
        titles = {h.conversation_id: await self._title(h.conversation_id) for h in page.hits}
        names = {h.sender_id: await self._name(h.sender_id) for h in page.hits}
        self.console.print(hits_table(page.hits, conversations=titles, senders=names))
        hint = "/open #<id> to go there"
        if page.next is not None:
            hint += "; /more for older hits"
        self.say(f"[dim]{escape(hint)}[/dim]")
