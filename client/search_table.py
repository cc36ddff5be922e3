"""Search hits as a rich table, shared by `warbler search` and `/search` in `warbler chat`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rich.table import Table
from rich.text import Text

from client.client import WarblerClient
from warbler.protocol import SearchHitPublic

HIGHLIGHT = "bold reverse"
_ELLIPSIS = "…"


def highlighted(hit: SearchHitPublic) -> Text:
    """The hit's snippet on one line, its matched words styled, with "…" where ``body`` goes
    on beyond the window."""
    # One character for one, so the highlight offsets still point at the words.
    flat = "".join(" " if c in "\r\n\t" else c for c in hit.snippet)
    text = Text(flat)
    for start, end in hit.highlights:
        text.stylize(HIGHLIGHT, start, end)
    if hit.snippet and not hit.body.startswith(hit.snippet):
        text = Text(_ELLIPSIS) + text
    if hit.snippet and not hit.body.endswith(hit.snippet):
        text.append(_ELLIPSIS)
    return text


def conversation_label(conversation_id: int, name: str | None) -> str:
    """``#12 Team`` (or ``#12`` when the name is not known)."""
    return f"#{conversation_id} {name}" if name else f"#{conversation_id}"


def hits_table(
    hits: Sequence[SearchHitPublic],
    *,
    conversations: Mapping[int, str],
    senders: Mapping[int, str],
    title: str | None = None,
) -> Table:
    """One row per hit: conversation, seq, sender, local time, snippet. Names come from the
    mappings (conversation id -> title, user id -> username); user text is never markup."""
    table = Table(title=title, show_edge=False, pad_edge=False)
    table.add_column("conversation", no_wrap=True)
    table.add_column("seq", justify="right")
    table.add_column("sender", no_wrap=True)
    table.add_column("time", no_wrap=True)
    table.add_column("snippet")
    for hit in hits:
        table.add_row(
            Text(conversation_label(hit.conversation_id, conversations.get(hit.conversation_id))),
            str(hit.seq),
            Text(senders.get(hit.sender_id, f"user{hit.sender_id}")),
            hit.created_at.astimezone().strftime("%Y-%m-%d %H:%M"),
            highlighted(hit),
        )
    return table


async def hit_names(
    client: WarblerClient, hits: Sequence[SearchHitPublic]
) -> tuple[dict[int, str], dict[int, str]]:
    """(conversation id -> name, user id -> username) for these hits, in two calls: the
    conversation list (group titles, direct peers) and the users."""
    if not hits:
        return {}, {}
    hit_convs = {h.conversation_id for h in hits}
    convs = {c.id: c for c in await client.list_conversations() if c.id in hit_convs}
    wanted = {h.sender_id for h in hits}
    wanted |= {c.peer_id for c in convs.values() if c.peer_id is not None}
    senders = {u.id: u.username for u in await client.users(sorted(wanted))}
    names: dict[int, str] = {}
    for conv_id, conv in convs.items():
        if conv.kind == "group":
            names[conv_id] = conv.title or f"group {conv_id}"
        elif conv.peer_id is not None:
            names[conv_id] = "@" + senders.get(conv.peer_id, f"user{conv.peer_id}")
    return names, senders
