"""Documents into text: the PDF text layer (issue 12), and what is refused with a clear error."""

from __future__ import annotations

import pytest

from actors.bot_knowledge import chunk_text, content_type_of, extract_text
from tests.support import minimal_pdf
from warbler.errors import ErrorCode, WarblerError


def test_a_pdf_gives_its_text_layer() -> None:
    pdf = minimal_pdf(["Opening hours", "Our shops open at 9:00 and close at 18:00."])
    assert content_type_of("hours.pdf", None) == "application/pdf"
    assert content_type_of("hours", "application/pdf") == "application/pdf"
    text = extract_text("application/pdf", pdf)
    assert "Our shops open at 9:00 and close at 18:00." in text
    assert any("close at 18:00" in body for _, body in chunk_text(text))


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"%PDF-1.4\nnot really", "not a readable PDF"),
        (b"plain text that says it is a PDF", "not a readable PDF"),
        (minimal_pdf([]), "no text layer"),
    ],
)
def test_a_bad_pdf_is_a_validation_error(data: bytes, why: str) -> None:
    with pytest.raises(WarblerError) as info:
        extract_text("application/pdf", data)
    assert info.value.code == ErrorCode.VALIDATION and why in info.value.message
