"""How search hits are shown in the terminal (`warbler search`, `/search`): no gateway needed."""

from __future__ import annotations

import io
from datetime import UTC, datetime

from rich.console import Console
from rich.text import Text

from client.search_table import HIGHLIGHT, highlighted, hits_table
from warbler.protocol import SearchHitPublic


def hit(
    body: str, snippet: str, highlights: list[tuple[int, int]], **fields: int
) -> SearchHitPublic:
    return SearchHitPublic(
        conversation_id=fields.get("conversation_id", 7),
        seq=fields.get("seq", 3),
        sender_id=fields.get("sender_id", 42),
        created_at=datetime(2026, 12, 3, 7, 0, tzinfo=UTC),
        body=body,
        snippet=snippet,
        highlights=highlights,
    )


def styled(text: Text) -> list[str]:
    """The parts of ``text`` drawn as matches."""
    return [text.plain[s.start : s.end] for s in text.spans if s.style == HIGHLIGHT]


def test_matched_words_are_highlighted_on_one_line() -> None:
    body = "Lunch\non Friday? 🍕 friday works"
    text = highlighted(hit(body, body, [(9, 15), (19, 25)]))
    assert text.plain == "Lunch on Friday? 🍕 friday works"
    assert styled(text) == ["Friday", "friday"]


def test_a_window_of_a_longer_body_gets_ellipses() -> None:
    body = "x" * 50 + " the word kiwi is here " + "y" * 50
    snippet = body[40:80]
    start = snippet.index("kiwi")
    text = highlighted(hit(body, snippet, [(start, start + 4)]))
    assert text.plain == "…" + snippet + "…"
    assert styled(text) == ["kiwi"]
    head = highlighted(hit(body, body[:60], []))
    assert head.plain == body[:60] + "…"


def test_the_table_names_conversations_and_senders_and_keeps_markup_as_text() -> None:
    hits = [
        hit("[bold]kiwi[/bold]", "[bold]kiwi[/bold]", [(6, 10)], seq=9),
        hit("kiwi too", "kiwi too", [(0, 4)], conversation_id=8, sender_id=5, seq=2),
    ]
    out = io.StringIO()
    console = Console(file=out, width=120, color_system=None, force_terminal=False)
    console.print(hits_table(hits, conversations={7: "Team [x]"}, senders={42: "alice"}))
    text = out.getvalue()
    for column in ("conversation", "seq", "sender", "time", "snippet"):
        assert column in text
    rows = [line for line in text.splitlines() if "kiwi" in line]
    assert "#7 Team [x]" in rows[0] and "alice" in rows[0] and "[bold]kiwi[/bold]" in rows[0]
    # Unknown names fall back to ids rather than failing.
    assert "#8" in rows[1] and "user5" in rows[1]
    local = datetime(2026, 12, 3, 7, 0, tzinfo=UTC).astimezone().strftime("%Y-%m-%d %H:%M")
    assert local in rows[0]
