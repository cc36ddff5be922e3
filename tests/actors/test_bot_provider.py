"""Providers against a local server speaking the OpenAI streaming wire format; the offline
extractive answer; the knowledge chunker; the embedder's real similarities."""

from __future__ import annotations

import pytest

from actors.bot_knowledge import chunk_text, content_type_of, extract_text
from actors.bot_provider import ExtractiveProvider, OpenAIProvider, Prompt, run_with_retry
from storage.knowledge import Passage
from tests.fake_openai import FakeOpenAI
from warbler.errors import ErrorCode, WarblerError

PASSAGES = (
    (0.8, Passage("faq.md", "How do I reset my password?", "Open Settings and press Reset.")),
    (0.3, Passage("faq.md", "Opening hours?", "We open at nine.")),
)


async def _collect(provider: object, timeout_s: float = 5.0) -> tuple[str, int, list[str]]:
    seen: list[str] = []

    async def on_text(text: str) -> None:
        seen.append(text)

    text, tokens = await run_with_retry(
        provider,  # type: ignore[arg-type]
        Prompt("Be brief.", "reset password?", PASSAGES),
        on_text,
        timeout_s=timeout_s,
    )
    return text, tokens, seen


async def test_openai_stream_is_parsed_piece_by_piece() -> None:
    fake = await FakeOpenAI(reply="Open Settings, then Reset password.", pieces=5).start()
    try:
        text, tokens, seen = await _collect(OpenAIProvider(fake.url, "m", "sk-test", 5.0))
    finally:
        await fake.stop()
    assert text == "Open Settings, then Reset password."
    assert len(seen) >= 5 and all(b.startswith(a) for a, b in zip(seen, seen[1:], strict=False))
    assert tokens == 42  # the usage chunk the server reported
    request = fake.requests[0]
    assert request["stream"] is True and request["model"] == "m"
    assert "Open Settings and press Reset." in request["messages"][0]["content"]
    assert request["messages"][1] == {"role": "user", "content": "reset password?"}
    assert fake.auth == ["Bearer sk-test"]


async def test_a_failed_attempt_is_retried_once() -> None:
    fake = await FakeOpenAI(reply="second try", fail_first=1).start()
    try:
        text, _, _ = await _collect(OpenAIProvider(fake.url, "m", "", 5.0))
    finally:
        await fake.stop()
    assert text == "second try"
    assert len(fake.requests) == 2


async def test_a_stalled_provider_times_out_and_is_retried() -> None:
    fake = await FakeOpenAI(reply="after the stall", stall_first=1, stall_s=3).start()
    try:
        text, _, _ = await _collect(OpenAIProvider(fake.url, "m", "", 5.0), timeout_s=2.0)
    finally:
        await fake.stop()
    assert text == "after the stall"
    assert len(fake.requests) == 2


async def test_two_failures_give_up_with_unavailable() -> None:
    fake = await FakeOpenAI(fail_first=5).start()
    try:
        with pytest.raises(WarblerError) as err:
            await _collect(OpenAIProvider(fake.url, "m", "", 5.0))
    finally:
        await fake.stop()
    assert err.value.code == ErrorCode.UNAVAILABLE
    assert len(fake.requests) == 2


async def test_extractive_answer_quotes_the_best_passage_only() -> None:
    text, tokens, seen = await _collect(ExtractiveProvider())
    assert text == "Open Settings and press Reset."
    assert tokens > 0 and seen[-1] == text


def test_markdown_faq_chunks_keep_their_question() -> None:
    md = "# FAQ\n\n## How do I reset my password?\nOpen Settings.\n\n## Returns?\nWithin 30 days.\n"
    assert chunk_text(md) == [
        ("How do I reset my password?", "Open Settings."),
        ("Returns?", "Within 30 days."),
    ]


def test_html_text_skips_scripts_and_keeps_headings() -> None:
    html = b"<h2>Shipping?</h2><p>We ship in <b>2</b> days.</p><script>x=1</script>"
    assert chunk_text(extract_text("text/html", html)) == [("Shipping?", "We ship in 2 days.")]


def test_unknown_content_types_are_refused() -> None:
    assert content_type_of("a.md", None) == "text/markdown"
    with pytest.raises(WarblerError) as err:
        content_type_of("a.bin", "application/octet-stream")
    assert err.value.code == ErrorCode.UNSUPPORTED


def test_embedder_ranks_the_matching_passage_first() -> None:
    from actors.bot_embedding import shared_embedder

    vectors = shared_embedder().embed(
        [
            "I forgot my password, how can I change it?",
            "How do I reset my password? Open Settings and press Reset.",
            "What are your opening hours? We open at nine.",
        ]
    )
    scores = vectors[1:] @ vectors[0]
    assert scores[0] > scores[1] + 0.2
