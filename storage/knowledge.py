"""A bot's knowledge base: documents, their passages and the passages' embeddings.

Vectors are unit-length float32 bytes in a blob (every engine stores bytes alike); the search
loads a bot's whole matrix and ranks by dot product in the caller's process. That is fine to
some 10^5 passages per bot (150 MB of float32 at 384 dimensions); past it, a vector index
(pgvector, an ANN library) would be the next step (docs/chatai.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from sqlalchemy import delete, update
from sqlmodel import col, select

from storage.db import Database
from storage.models import DOC_NAME_MAX, Bot, KnowledgeChunk, KnowledgeDoc
from storage.types import utcnow
from warbler.errors import ErrorCode, WarblerError

Vectors = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class Passage:
    """One passage as stored: where it comes from and its text."""

    doc_name: str
    heading: str
    text: str


@dataclass(frozen=True, slots=True)
class KnowledgeIndex:
    """A bot's passages and their vectors (row i of ``matrix`` is ``passages[i]``)."""

    version: int
    passages: tuple[Passage, ...]
    matrix: Vectors

    def search(self, query: Vectors, k: int) -> list[tuple[float, Passage]]:
        """The ``k`` passages most similar to the unit vector ``query``, best first."""
        if not self.passages:
            return []
        scores = self.matrix @ query
        top = np.argsort(-scores)[:k]
        return [(float(scores[i]), self.passages[int(i)]) for i in top]


class KnowledgeStore:
    """Documents and passages per bot."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def replace_document(
        self,
        bot_id: int,
        name: str,
        content_type: str,
        chars: int,
        passages: list[tuple[str, str]],
        vectors: Vectors,
    ) -> KnowledgeDoc:
        """Store (or re-index) document ``name``: its old passages go, the new ones and
        their vectors come in, and the bot's ``kb_version`` grows, in one transaction."""
        if not 1 <= len(name) <= DOC_NAME_MAX:
            raise WarblerError(
                ErrorCode.VALIDATION, f"document name must be 1-{DOC_NAME_MAX} chars"
            )
        if len(passages) != len(vectors):
            raise WarblerError(ErrorCode.INTERNAL, "one vector per passage")
        async with self._db.session() as session:
            doc = (
                await session.exec(
                    select(KnowledgeDoc).where(
                        col(KnowledgeDoc.bot_id) == bot_id, col(KnowledgeDoc.name) == name
                    )
                )
            ).first()
            if doc is None:
                doc = KnowledgeDoc(bot_id=bot_id, name=name, content_type=content_type)
                session.add(doc)
                await session.flush()
            else:
                await session.exec(
                    delete(KnowledgeChunk).where(col(KnowledgeChunk.doc_id) == doc.id)
                )
            doc.content_type = content_type
            doc.chunks = len(passages)
            doc.chars = chars
            doc.updated_at = utcnow()
            session.add(doc)
            session.add_all(
                KnowledgeChunk(
                    doc_id=doc.id,
                    bot_id=bot_id,
                    ordinal=i,
                    heading=heading[:DOC_NAME_MAX],
                    text=text,
                    vector=np.asarray(vec, dtype=np.float32).tobytes(),
                )
                for i, ((heading, text), vec) in enumerate(zip(passages, vectors, strict=True))
            )
            await session.exec(
                update(Bot).where(col(Bot.id) == bot_id).values(kb_version=col(Bot.kb_version) + 1)
            )
            await session.commit()
            return doc

    async def list_documents(self, bot_id: int) -> list[KnowledgeDoc]:
        """The bot's documents by name."""
        async with self._db.session() as session:
            result = await session.exec(
                select(KnowledgeDoc)
                .where(col(KnowledgeDoc.bot_id) == bot_id)
                .order_by(col(KnowledgeDoc.name))
            )
            return list(result.all())

    async def delete_document(self, bot_id: int, name: str) -> bool:
        """Remove a document and its passages; True if it existed."""
        async with self._db.session() as session:
            doc = (
                await session.exec(
                    select(KnowledgeDoc).where(
                        col(KnowledgeDoc.bot_id) == bot_id, col(KnowledgeDoc.name) == name
                    )
                )
            ).first()
            if doc is None:
                return False
            await session.exec(delete(KnowledgeChunk).where(col(KnowledgeChunk.doc_id) == doc.id))
            await session.delete(doc)
            await session.exec(
                update(Bot).where(col(Bot.id) == bot_id).values(kb_version=col(Bot.kb_version) + 1)
            )
            await session.commit()
            return True

    async def load_index(self, bot_id: int, version: int, dim: int) -> KnowledgeIndex:
        """Every passage of the bot with its vector (``version``: the bot's kb_version read
        with it, so callers know when to reload)."""
        async with self._db.session() as session:
            rows = (
                await session.exec(
                    select(
                        KnowledgeDoc.name,
                        KnowledgeChunk.heading,
                        KnowledgeChunk.text,
                        KnowledgeChunk.vector,
                    )
                    .join(KnowledgeDoc, col(KnowledgeDoc.id) == col(KnowledgeChunk.doc_id))
                    .where(col(KnowledgeChunk.bot_id) == bot_id)
                    .order_by(col(KnowledgeDoc.name), col(KnowledgeChunk.ordinal))
                )
            ).all()
        passages = tuple(Passage(str(n), str(h), str(t)) for n, h, t, _ in rows)
        if rows:
            matrix = np.vstack([np.frombuffer(v, dtype=np.float32) for *_, v in rows])
        else:
            matrix = np.zeros((0, dim), dtype=np.float32)
        return KnowledgeIndex(version, passages, matrix)
