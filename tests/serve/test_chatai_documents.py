"""Knowledge-base documents through the real gateway: a PDF is indexed, a document larger than
the 64 KiB cap of every other request is accepted, past the document cap it is refused unread
(413 problem JSON) and nothing changes."""

from __future__ import annotations

import uuid

import httpx
import pytest
from gwclient import make_account

from actors.bot_knowledge import MAX_DOCUMENT_BYTES
from tests.support import minimal_pdf

pytestmark = [pytest.mark.ray]


async def test_documents_pdf_and_sizes(http: httpx.AsyncClient) -> None:
    owner = await make_account(http, "docs")
    r = await http.post(
        "/v1/bots", json={"username": f"docs-{uuid.uuid4().hex[:8]}"}, headers=owner.headers
    )
    assert r.status_code == 201, r.text
    docs = f"/v1/bots/{r.json()['id']}/documents"

    r = await http.put(
        f"{docs}/hours.pdf",
        content=minimal_pdf(["Opening hours", "Our shops open at 9:00 and close at 18:00."]),
        headers={**owner.headers, "Content-Type": "application/pdf"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["content_type"] == "application/pdf" and r.json()["chunks"] >= 1

    # ~200 KiB of HTML, over the 64 KiB every other request may send, that is mostly a style
    # sheet (dropped): the size is what is tested, not the embedder's speed on 2 cores.
    style = "".join(f".c{i} {{ color: #{i % 4096:03x}; }}\n" for i in range(8000))
    big = f"<html><head><style>{style}</style></head><body><h1>Returns</h1><p>Within 30 days.</p>"
    assert 64 * 1024 < len(big) < MAX_DOCUMENT_BYTES
    r = await http.put(
        f"{docs}/big.html",
        content=big.encode(),
        headers={**owner.headers, "Content-Type": "text/html"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["chunks"] == 1

    r = await http.put(
        f"{docs}/huge.md",
        content=b"x" * (MAX_DOCUMENT_BYTES + 1),
        headers={**owner.headers, "Content-Type": "text/markdown"},
    )
    assert r.status_code == 413 and r.json()["code"] == "too_large"
    # Any other route keeps the small cap.
    r = await http.patch("/v1/users/me", content=b"{" + b" " * 70_000 + b"}", headers=owner.headers)
    assert r.status_code == 413

    r = await http.put(
        f"{docs}/broken.pdf",
        content=b"%PDF-1.4\nnot really",
        headers={**owner.headers, "Content-Type": "application/pdf"},
    )
    assert r.status_code == 422 and r.json()["code"] == "validation_error", r.text
    r = await http.get(docs, headers=owner.headers)
    assert sorted(d["name"] for d in r.json()) == ["big.html", "hours.pdf"]
