"""Turning an uploaded document into passages: text from Markdown, HTML, plain text or a PDF's
text layer, then chunks of a few sentences that keep the heading they sit under (cited with the
answer)."""

from __future__ import annotations

import io
import logging
import re
from html.parser import HTMLParser

from warbler.errors import ErrorCode, WarblerError

# ~100 words: long enough to hold a FAQ answer, short enough for MiniLM's 256-token window.
PASSAGE_CHARS = 600
# The gateway lets a document upload's body be this large (every other request: 64 KiB).
MAX_DOCUMENT_BYTES = 2 * 1024 * 1024
CONTENT_TYPES = ("text/plain", "text/markdown", "text/html", "application/pdf")
# A PDF that expands to more text than this is refused (a small file can hold a lot).
MAX_PDF_CHARS = 4 * MAX_DOCUMENT_BYTES

logger = logging.getLogger(__name__)

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
    if lower.endswith(".pdf"):
        return "application/pdf"
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
    if content_type == "application/pdf":
        return _pdf_text(data)
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


def _pdf_text(data: bytes) -> str:
    """The text layer of a PDF, a page per paragraph block (a scanned PDF has none: refused)."""
    from pypdf import PdfReader  # only for PDFs: most documents are text
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise WarblerError(ErrorCode.VALIDATION, "the PDF is encrypted; upload it unlocked")
        pages: list[str] = []
        size = 0
        for page in reader.pages:
            text = page.extract_text() or ""
            size += len(text)
            if size > MAX_PDF_CHARS:
                raise WarblerError(
                    ErrorCode.TOO_LARGE, f"the PDF holds more than {MAX_PDF_CHARS} characters"
                )
            pages.append(text)
    except WarblerError:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, OSError) as exc:
        # pypdf raises several kinds on a damaged file; none of them is ours to crash on.
        logger.info("unreadable PDF: %r", exc)
        raise WarblerError(ErrorCode.VALIDATION, "not a readable PDF") from exc
    text = "\n\n".join(p.strip() for p in pages if p.strip())
    if not text:
        raise WarblerError(ErrorCode.VALIDATION, "the PDF has no text layer (a scan?)")
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
