"""BotStore, KnowledgeStore and the pending-turn set on the session's real SQL and Redis."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import numpy as np
import pytest
import redis.asyncio as aioredis

from storage import (
    ConversationStore,
    Database,
    GroupCommitWriter,
    Keys,
    MessageDraft,
    SeqCounter,
    User,
)
from storage.bots import BotStore, PendingTurnCache
from storage.knowledge import KnowledgeStore
from warbler.errors import ErrorCode, WarblerError

MakeUser = Callable[[str], Awaitable[User]]


def _unit(*values: float) -> np.ndarray:
    v = np.zeros(384, dtype=np.float32)
    v[: len(values)] = values
    return v / np.linalg.norm(v)


async def test_a_bot_is_a_user_of_kind_bot(db: Database, make_user: MakeUser, uid: str) -> None:
    bots = BotStore(db)
    owner = await make_user("owner")
    bot, user = await bots.create_bot(owner.id, f"bot-{uid}", "Helper", token_budget=10)
    assert user.kind == "bot" and bot.user_id == user.id and bot.owner_id == owner.id
    assert bot.provider == {"kind": "extractive"}
    assert user.id in await bots.bot_user_ids()
    assert owner.id not in await bots.bot_user_ids()
    with pytest.raises(WarblerError) as err:
        await bots.create_bot(owner.id, f"bot-{uid}", "Twin")
    assert err.value.code == ErrorCode.USERNAME_TAKEN
    await bots.charge(bot.id, 7)
    await bots.charge(bot.id, 5)
    fresh = await bots.get_bot(bot.id)
    assert fresh is not None and fresh.tokens_used == 12
    assert await bots.owner_tokens_used(owner.id) == 12


async def test_documents_are_replaced_and_searched_by_cosine(
    db: Database, make_user: MakeUser, uid: str
) -> None:
    bots, knowledge = BotStore(db), KnowledgeStore(db)
    owner = await make_user("owner")
    bot, _ = await bots.create_bot(owner.id, f"kb-{uid}", "KB")
    passages = [("Reset?", "press reset"), ("Hours?", "nine to six"), ("Returns?", "30 days")]
    vectors = np.vstack([_unit(1, 0), _unit(0, 1), _unit(0, 0, 1)])
    doc = await knowledge.replace_document(bot.id, "faq.md", "text/markdown", 99, passages, vectors)
    assert (doc.chunks, doc.chars) == (3, 99)
    version = (await bots.get_bot(bot.id)).kb_version  # type: ignore[union-attr]
    index = await knowledge.load_index(bot.id, version, 384)
    best = index.search(_unit(0.2, 1.0), 2)
    assert [p.heading for _, p in best] == ["Hours?", "Reset?"]
    assert best[0][0] == pytest.approx(float(_unit(0.2, 1.0) @ _unit(0, 1)), abs=1e-5)
    # Re-indexing the same name replaces its passages and moves the version.
    await knowledge.replace_document(
        bot.id, "faq.md", "text/markdown", 10, [("Only?", "one")], _unit(1)[None, :]
    )
    bumped = (await bots.get_bot(bot.id)).kb_version  # type: ignore[union-attr]
    assert bumped == version + 1
    index = await knowledge.load_index(bot.id, bumped, 384)
    assert [p.text for p in index.passages] == ["one"]
    assert [d.name for d in await knowledge.list_documents(bot.id)] == ["faq.md"]
    assert await knowledge.delete_document(bot.id, "faq.md")
    assert not await knowledge.delete_document(bot.id, "faq.md")
    assert (await knowledge.load_index(bot.id, 0, 384)).passages == ()


async def test_finish_answer_changes_only_the_bots_own_message(
    db: Database, make_user: MakeUser, uid: str
) -> None:
    bots, conversations = BotStore(db), ConversationStore(db)
    customer = await make_user("cust")
    bot, bot_user = await bots.create_bot(customer.id, f"fin-{uid}", "Fin")
    conv = await conversations.get_or_create_direct(customer.id, bot_user.id)
    writer = GroupCommitWriter(db)
    await writer.start()
    try:
        counter = SeqCounter(0)
        mine = await writer.append(
            MessageDraft(conv.id, customer.id, f"c-{uid}", "text", {"text": "q"}), counter
        )
        answer = await writer.append(
            MessageDraft(conv.id, bot_user.id, f"b-{uid}", "json", {"text": ""}), counter
        )
    finally:
        await writer.stop()
    final = {"text": "the answer", "bot": {"final": True}}
    assert await bots.finish_answer(conv.id, answer.seq, bot_user.id, final, charge=(bot.id, 9))
    # Not the bot's message: nothing changes, and nothing is charged.
    assert not await bots.finish_answer(
        conv.id, mine.seq, bot_user.id, final, charge=(bot.id, 100)
    )
    charged = await bots.get_bot(bot.id)
    assert charged is not None and charged.tokens_used == 9
    from storage import MessageStore

    page = await MessageStore(db).page_messages(conv.id, after_seq=0)
    assert [m.body for m in page] == [{"text": "q"}, final]


async def test_pending_turns_are_claimed_when_due(redis: aioredis.Redis, keys: Keys) -> None:
    pending = PendingTurnCache(redis, keys)
    await pending.add(b"turn-1", 60.0)
    assert await pending.claim_due(60.0) == []
    await pending.postpone(b"turn-1", -1.0)  # a failed turn whose retry is due
    assert await pending.claim_due(60.0) == [b"turn-1"]
    # Claiming marks it as due again later: not due again at once.
    assert await pending.claim_due(60.0) == []
    await pending.postpone(b"turn-1", -1.0)
    await pending.done(b"turn-1")
    assert await pending.claim_due(0.0) == []
    # Postponing a turn that is done does not bring it back.
    await pending.postpone(b"turn-1", -1.0)
    assert await pending.claim_due(0.0) == []
