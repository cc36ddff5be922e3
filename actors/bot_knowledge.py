"""Turning an uploaded document into passages: text from Markdown, HTML or plain text, then
chunks of a few sentences that keep the heading they sit under (cited with the answer)."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from warbler.errors import ErrorCode, WarblerError

# ~100 words: long enough to hold a FAQ answer, short enough for MiniLM's 256-token window.
PASSAGE_CHARS = 600
MAX_DOCUMENT_BYTES = 2 * 1024 * 1024
CONTENT_TYPES = ("text/plain", "text/markdown", "text/html")

_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_BLANK = re.compile(r"\n\s*\n")
_SPACE = re.compile(r"[ \t\r\f\v]+")


class _HTMLText(HTMLParser):
    """Visible text of an HTML page, with headings as Markdown headings and blocks as
    paragraphs (so the chunker sees the same shape as in Markdown)."""

    _BLOCKS = frozenset({"p", "div", "li", "br", "tr", "section", "article", "dt", "dd"})
    _SKIP = frozenset({"script", "style", "head", "noscript"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self._skip += 1
        elif re.fullmatch(r"h[1-6]", tag):
            self.parts.append("\n\n" + "#" * int(tag[1]) + " ")
        elif tag in self._BLOCKS:
            self.parts.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP:
            self._skip = max(0, self._skip - 1)
        elif re.fullmatch(r"h[1-6]", tag) or tag in self._BLOCKS:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data.replace("\n", " "))


def content_type_of(name: str, declared: str | None) -> str:
    """The content type to parse ``name`` as (by extension first, then what was declared)."""
    lower = name.lower()
    if lower.endswith((".md", ".markdown")):
        return "text/markdown"
    if lower.endswith((".html", ".htm")):
        return "text/html"
    if lower.endswith(".txt"):
        return "text/plain"
    base = (declared or "text/plain").split(";")[0].strip().lower()
    if base not in CONTENT_TYPES:
        raise WarblerError(
            ErrorCode.UNSUPPORTED, f"cannot index {base!r}; upload one of {CONTENT_TYPES}"
        )
    return base


def extract_text(content_type: str, data: bytes) -> str:
    """The document's text, Markdown-shaped (headings ``#``, paragraphs by blank lines)."""
    if len(data) > MAX_DOCUMENT_BYTES:
        raise WarblerError(
            ErrorCode.TOO_LARGE, f"documents are limited to {MAX_DOCUMENT_BYTES} bytes"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WarblerError(ErrorCode.VALIDATION, "documents must be UTF-8 text") from exc
    if content_type == "text/html":
        parser = _HTMLText()
        parser.feed(text)
        parser.close()
        text = "".join(parser.parts)
    return text


def chunk_text(text: str, *, max_chars: int = PASSAGE_CHARS) -> list[tuple[str, str]]:
    """``(heading, passage)`` pairs: paragraphs joined up to ``max_chars``, never across a
    heading; a paragraph longer than that is cut at sentence ends."""
    passages: list[tuple[str, str]] = []
    heading = ""
    current: list[str] = []

    def flush() -> None:
        if current:
            passages.append((heading, " ".join(current)))
            current.clear()

    for block in _BLANK.split(text.replace("\r\n", "\n")):
        lines = [ln for ln in block.strip().split("\n") if ln.strip()]
        body: list[str] = []
        for line in lines:
            match = _HEADING.match(line)
            if match:
                if body:
                    _add(" ".join(body), current, flush, max_chars)
                    body = []
                flush()
                heading = match.group(2).strip()
            else:
                body.append(_SPACE.sub(" ", line.strip()))
        if body:
            _add(" ".join(body), current, flush, max_chars)
            # A paragraph under a heading that is a question is one FAQ entry: keep it alone.
            if heading.endswith("?"):
                flush()
    flush()
    return [(h, p) for h, p in passages if p.strip()]


def _add(paragraph: str, current: list[str], flush: object, max_chars: int) -> None:
    assert callable(flush)
    pieces = [paragraph]
    if len(paragraph) > max_chars:
        pieces, piece = [], ""
        for sentence in re.split(r"(?<=[.!?])\s+", paragraph):
            if piece and len(piece) + len(sentence) + 1 > max_chars:
                pieces.append(piece)
                piece = ""
            piece = f"{piece} {sentence}".strip()
        if piece:
            pieces.append(piece)
    for piece in pieces:
        if current and sum(len(p) + 1 for p in current) + len(piece) > max_chars:
            flush()
        current.append(piece)
