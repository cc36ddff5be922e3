"""The web chat page in headless Chromium: two users in two browser contexts register, open a
direct conversation, exchange messages, and see each other's messages, typing and read receipts."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PASSWORD = "correct horse battery"
TIMEOUT_MS = 20_000

pytestmark = [
    pytest.mark.browser,
    pytest.mark.ray,
    pytest.mark.skipif(
        not os.path.exists(CHROMIUM),
        reason=f"{CHROMIUM} is missing (apt-get install -y chromium chromium-driver)",
    ),
]


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    playwright_api = pytest.importorskip("playwright.async_api")
    # expect() has its own 5 s default, apart from the page's: on a loaded 2-core machine a
    # receipt's round trip (read -> entity -> SQL -> pub/sub -> other page) can take longer.
    playwright_api.expect.set_options(timeout=TIMEOUT_MS)
    async with playwright_api.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        await browser.close()


async def open_page(browser: Any, errors: list[str]) -> Any:
    context = await browser.new_context(viewport={"width": 1180, "height": 720})
    page = await context.new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.set_default_timeout(TIMEOUT_MS)
    return page


async def register(page: Any, base: str, username: str, display: str) -> None:
    from playwright.async_api import expect

    await page.goto(base + "/")
    await page.click("#tab-register")
    await page.fill("#auth-username", username)
    await page.fill("#auth-display-name", display)
    await page.fill("#auth-password", PASSWORD)
    await page.click("#auth-submit")
    await expect(page.locator("#conn-status")).to_have_attribute(
        "data-state", "online", timeout=TIMEOUT_MS
    )


async def test_two_browsers_chat_with_receipts_and_typing(
    browser: Any, gateway_url: str, uid: str, tmp_path: Path
) -> None:
    from playwright.async_api import expect

    errors: list[str] = []
    alice = await open_page(browser, errors)
    bob = await open_page(browser, errors)
    await register(alice, gateway_url, f"alice_{uid}", "Alice")
    await register(bob, gateway_url, f"bob_{uid}", "Bob")

    # Alice starts a direct chat with Bob by username and writes (markup must stay text).
    await alice.fill("#new-direct-input", f"bob_{uid}")
    await alice.click("#new-direct-btn")
    await expect(alice.locator("#thread-name")).to_have_text("Bob")
    hostile = "Hi Bob! <img src=x onerror=alert(1)> <b>not bold</b>"
    await alice.fill("#message-input", hostile)
    await alice.press("#message-input", "Enter")
    await expect(alice.locator(".msg.mine[data-seq]")).to_have_count(1)
    await expect(alice.locator(".receipt")).to_contain_text("Sent")

    # Bob sees the new conversation with an unread badge, opens it, reads the message.
    conv = bob.locator("#conv-list .conv").first
    await expect(conv.locator(".badge")).to_have_text("1")
    await expect(conv.locator(".conv-name")).to_have_text("Alice")
    await conv.click()
    await expect(bob.locator(".msg.theirs .body")).to_have_text(hostile)
    assert await bob.locator(".msg img, .msg b").count() == 0
    await expect(conv.locator(".badge")).to_have_count(0)

    # Opening it marked it read: Alice's page shows the receipt.
    await expect(alice.locator(".receipt")).to_contain_text("Seen")

    # Bob types (Alice sees the indicator), then answers; Alice sees it live and reads it.
    await bob.fill("#message-input", "Hello Alice")
    await expect(alice.locator("#typing")).to_contain_text("Bob is typing")
    await bob.press("#message-input", "Enter")
    await expect(alice.locator(".msg.theirs .body")).to_have_text("Hello Alice")
    await expect(alice.locator("#typing")).to_have_text("")
    await expect(bob.locator(".receipt")).to_contain_text("Seen")

    # A few more back and forth; both sides end with the same ordered log.
    for i in range(3):
        await alice.fill("#message-input", f"ping {i}")
        await alice.press("#message-input", "Enter")
        await expect(bob.locator(".msg.theirs .body").last).to_have_text(f"ping {i}")
    await bob.fill("#message-input", "pong")
    await bob.press("#message-input", "Enter")
    await expect(alice.locator(".msg.theirs .body").last).to_have_text("pong")
    seqs_a = await alice.locator(".msg[data-seq]").evaluate_all(
        "els => els.map(e => Number(e.dataset.seq))"
    )
    seqs_b = await bob.locator(".msg[data-seq]").evaluate_all(
        "els => els.map(e => Number(e.dataset.seq))"
    )
    assert seqs_a == seqs_b == list(range(1, 7))

    # The page resumes after its socket drops: a message sent meanwhile arrives once.
    await bob.evaluate("window.warbler.dropSocket()")
    await alice.fill("#message-input", "while you were away")
    await alice.press("#message-input", "Enter")
    await expect(bob.locator(".msg.theirs .body").last).to_have_text("while you were away")
    await expect(bob.locator(".msg[data-seq]")).to_have_count(7)

    # A group with Bob: it appears in Bob's list.
    await alice.click("#new-group-btn")
    await alice.fill("#group-title", "Weekend <plans>")
    await alice.fill("#group-members", f"bob_{uid}")
    await alice.click("#group-submit")
    await expect(alice.locator("#thread-name")).to_have_text("Weekend <plans>")
    await expect(alice.locator(".system").first).to_have_text("Alice created “Weekend <plans>”")
    await alice.fill("#message-input", "Who is in?")
    await alice.press("#message-input", "Enter")
    group = bob.locator("#conv-list .conv", has_text="Weekend <plans>")
    await expect(group.locator(".badge")).to_be_visible()

    await alice.locator("#conv-list .conv", has_text="Bob").click()
    await expect(alice.locator(".receipt")).to_contain_text("Seen")
    await alice.screenshot(path=str(tmp_path / "alice.png"))
    await bob.screenshot(path=str(tmp_path / "bob.png"))
    assert (tmp_path / "alice.png").stat().st_size > 0
    assert errors == [], errors


async def test_wrong_password_shows_an_error(browser: Any, gateway_url: str, uid: str) -> None:
    from playwright.async_api import expect

    errors: list[str] = []
    page = await open_page(browser, errors)
    await page.goto(gateway_url + "/")
    await page.fill("#auth-username", f"nobody_{uid}")
    await page.fill("#auth-password", "wrong password")
    await page.click("#auth-submit")
    await expect(page.locator("#auth-error")).to_have_text("Wrong username or password.")
    assert await page.locator("#chat-view").is_hidden()
    assert errors == []
