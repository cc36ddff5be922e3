"""The web chat page in headless Chromium: two users in two browser contexts register, open a
direct conversation, exchange messages, and see each other's messages, typing and read receipts;
on a phone-sized screen, the list/thread view, links, wrapping, the unread count in the tab title,
notifications, and which buttons a plain member gets."""

from __future__ import annotations

import os
import re
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


async def open_page(
    browser: Any, errors: list[str], *, width: int = 1180, height: int = 720
) -> Any:
    context = await browser.new_context(viewport={"width": width, "height": height})
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


# Stands in for the browser's Notification API (headless Chromium shows none): records what the
# page asks for and shows, so the test sees when permission is requested and what is notified.
FAKE_NOTIFICATIONS = """
window.__notes = [];
window.__asked = 0;
window.Notification = function (title, options) {
  window.__notes.push({ title, body: options && options.body });
  this.close = () => {};
};
window.Notification.permission = "default";
window.Notification.requestPermission = () => {
  window.__asked += 1;
  window.Notification.permission = "granted";
  return Promise.resolve("granted");
};
"""


async def test_phone_layout_links_wrapping_title_and_member_buttons(
    browser: Any, gateway_url: str, uid: str, tmp_path: Path
) -> None:
    from playwright.async_api import expect

    errors: list[str] = []
    alice = await open_page(browser, errors, width=390, height=844)
    bob = await open_page(browser, errors, width=390, height=844)
    await bob.add_init_script(FAKE_NOTIFICATIONS)
    await register(alice, gateway_url, f"alice_{uid}", "Alice")
    await register(bob, gateway_url, f"bob_{uid}", "Bob")

    # A phone shows one pane: the list, until a conversation opens.
    await expect(alice.locator(".sidebar")).to_be_visible()
    await expect(alice.locator(".thread")).to_be_hidden()
    await alice.click("#new-group-btn")
    await alice.fill("#group-title", "Phones")
    await alice.fill("#group-members", f"bob_{uid}")
    await alice.click("#group-submit")
    await expect(alice.locator("#thread-name")).to_have_text("Phones")
    await expect(alice.locator(".sidebar")).to_be_hidden()
    await expect(alice.locator("#back-btn")).to_be_visible()
    # The owner may add members.
    await expect(alice.locator("#add-members-btn")).to_be_visible()

    # Bob's first click in the chat is the gesture that asks for notification permission;
    # nothing asked before it.
    assert await bob.evaluate("window.__asked") == 0
    await bob.locator("#conv-list .conv", has_text="Phones").wait_for()
    await bob.click(".sidebar-head")
    assert await bob.evaluate("window.__asked") == 1

    # Alice writes a link, a fake link and a very long word.
    await alice.fill("#message-input", "docs: https://example.com/a?b=1. not javascript:alert(1)")
    await alice.press("#message-input", "Enter")
    long_word = "w" * 400
    await alice.fill("#message-input", long_word)
    await alice.press("#message-input", "Enter")
    await expect(alice.locator(".msg.mine[data-seq]")).to_have_count(2)

    # Bob is on his list: the tab counts the unread messages and he got a notification.
    await expect(bob).to_have_title(re.compile(r"^\(\d+\) Warbler$"))
    await bob.wait_for_function("window.__notes.length >= 2")
    notes = await bob.evaluate("window.__notes")
    assert notes[-1]["title"] == "Alice in Phones", notes
    assert notes[-1]["body"] == long_word, notes

    # He opens it: the thread replaces the list, the count leaves the title.
    await bob.locator("#conv-list .conv", has_text="Phones").click()
    await expect(bob.locator(".sidebar")).to_be_hidden()
    await expect(bob).to_have_title("Warbler")
    # A plain member gets no "Add members" (the server would answer 403).
    await expect(bob.locator("#thread-name")).to_have_text("Phones")
    await expect(bob.locator("#add-members-btn")).to_be_hidden()

    # The link is an <a> to exactly that URL, opened safely; the rest stays text.
    first = bob.locator(".msg.theirs .body").first
    await expect(first).to_have_text("docs: https://example.com/a?b=1. not javascript:alert(1)")
    links = first.locator("a")
    await expect(links).to_have_count(1)
    await expect(links).to_have_attribute("href", "https://example.com/a?b=1")
    await expect(links).to_have_attribute("rel", "noopener noreferrer nofollow")
    await expect(links).to_have_attribute("target", "_blank")

    # The long word wraps inside its bubble: nothing is wider than the screen.
    await expect(bob.locator(".msg.theirs .body").last).to_have_text(long_word)
    layout = await bob.evaluate(
        """(() => {
          const boxes = [...document.querySelectorAll('.msg .bubble')]
            .map((e) => e.getBoundingClientRect());
          const m = document.getElementById('messages');
          return { left: Math.min(...boxes.map((b) => b.left)),
                   right: Math.max(...boxes.map((b) => b.right)),
                   tallest: Math.max(...boxes.map((b) => b.height)),
                   screen: window.innerWidth, overflow: m.scrollWidth - m.clientWidth };
        })()"""
    )
    assert layout["left"] >= 0 and layout["right"] <= layout["screen"] == 390, layout
    assert layout["overflow"] <= 0 and layout["tallest"] > 60, layout  # wrapped: several lines
    await bob.screenshot(path=str(tmp_path / "bob-phone.png"))

    # Back returns to the list.
    await bob.click("#back-btn")
    await expect(bob.locator(".sidebar")).to_be_visible()
    await expect(bob.locator(".thread")).to_be_hidden()
    assert errors == [], errors


async def test_search_box_finds_messages_and_opens_the_hit(
    browser: Any, gateway_url: str, uid: str, tmp_path: Path
) -> None:
    from playwright.async_api import expect

    from client import WarblerClient

    errors: list[str] = []
    bob = await open_page(browser, errors)
    await register(bob, gateway_url, f"bob_{uid}", "Bob")
    word, step = f"guava{uid}", f"step{uid}"
    # Alice writes through the SDK: a hit further back than the page's first history load,
    # a newer one with emoji before the word (the server's offsets count code points, not
    # UTF-16 units) and markup, and one in a group.
    async with WarblerClient(gateway_url) as alice:
        await alice.register(f"alice_{uid}", PASSWORD, "Alice")
        await alice.connect()
        old = await alice.send(f"The {word} recipe, from long ago", to_user=f"bob_{uid}")
        direct = old.conversation_id
        for i in range(60):
            await alice.send(f"{step} {i}", conversation_id=direct)
        new = await alice.send(f"🍈🍈 fresh {word} <b>today</b>", conversation_id=direct)
        group = await alice.create_group("Market", [f"bob_{uid}"])
        in_group = await alice.send(f"{word.upper()} at the market", conversation_id=group.id)
    # Both conversations are on Bob's list before he searches, so hits show their names.
    await bob.locator("#conv-list .conv", has_text="Market").wait_for()
    await bob.locator("#conv-list .conv", has_text="Alice").wait_for()

    await bob.fill("#search-input", word)
    await bob.press("#search-input", "Enter")
    hits = bob.locator("#search-results .hit")
    await expect(hits).to_have_count(3)
    await expect(bob.locator("#search-status")).to_have_text(f"3 results for “{word}”")
    await expect(bob.locator("#conv-list")).to_be_hidden()
    await expect(hits.locator(".hit-conv")).to_have_text(["Market", "Alice", "Alice"])
    await expect(hits.locator(".hit-sender")).to_have_text(["Alice", "Alice", "Alice"])
    await expect(hits.nth(0).locator("mark")).to_have_text([word.upper()])
    await expect(hits.nth(1).locator(".hit-snippet")).to_have_text(
        f"🍈🍈 fresh {word} <b>today</b>"
    )
    await expect(hits.nth(1).locator("mark")).to_have_text([word])
    assert await bob.locator("#search-results b").count() == 0

    # The oldest hit opens its conversation with history loaded down to it, marked.
    await hits.nth(2).click()
    await expect(bob.locator("#thread-name")).to_have_text("Alice")
    found = bob.locator(f'.msg.found[data-seq="{old.seq}"]')
    await expect(found.locator(".body")).to_have_text(f"The {word} recipe, from long ago")
    await expect(found).to_be_in_viewport()
    seqs = await bob.locator(".msg[data-seq]").evaluate_all(
        "els => els.map(e => Number(e.dataset.seq))"
    )
    assert seqs == list(range(seqs[0], new.seq + 1)) and seqs[0] <= old.seq, seqs
    await bob.screenshot(path=str(tmp_path / "bob-search.png"))
    # The results stay: the group's hit opens the group.
    await hits.nth(0).click()
    await expect(bob.locator("#thread-name")).to_have_text("Market")
    await expect(bob.locator(f'.msg.found[data-seq="{in_group.seq}"]')).to_have_count(1)
    await expect(bob.locator(".msg.found")).to_have_count(1)

    # More than a page: "More results" follows the cursor until the last page.
    await bob.fill("#search-input", step)
    await bob.press("#search-input", "Enter")
    await expect(hits).to_have_count(20)
    await expect(bob.locator("#search-status")).to_have_text(f"20+ results for “{step}”")
    await bob.click("#search-more")
    await expect(hits).to_have_count(40)
    await bob.click("#search-more")
    await expect(hits).to_have_count(60)
    await expect(bob.locator("#search-more")).to_be_hidden()
    await expect(hits.first.locator(".hit-snippet")).to_have_text(f"{step} 59")
    await expect(hits.last.locator(".hit-snippet")).to_have_text(f"{step} 0")

    # A query with nothing to search for gets the server's reason; Escape closes the search.
    await bob.fill("#search-input", "?!")
    await bob.press("#search-input", "Enter")
    await expect(bob.locator("#search-status.error")).to_contain_text("no words")
    await expect(hits).to_have_count(0)
    await bob.press("#search-input", "Escape")
    await expect(bob.locator("#search-panel")).to_be_hidden()
    await expect(bob.locator("#conv-list")).to_be_visible()
    assert errors == [], errors
