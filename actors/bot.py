"""The bot entity (``"bot:<conversation id>"``): runs every bot of one conversation.

One entity per conversation (not per bot): its mailbox orders the bots' turns in that
conversation, and what a conversation needs remembered (turns in the last minute, handed
off or not, to whom, which triggers were answered) lives in one small state, checkpointed
like any entity. What is shared across conversations (a bot's budget, its knowledge) is in SQL.

A turn, for a member's message the conversation entity hands over after its commit:
1. skip if answered before (the trigger's seq), if no bot is addressed (groups: ``@name`` or
   the bot's ``answer_all``), while handed off, or over ``bot_turns_per_minute``;
2. "human" / "agent" (or retrieval below the bot's ``min_confidence``) hands off;
3. an exhausted budget (the bot's or its owner's) posts one notice;
4. else: embed the question, rank the bot's passages, log a placeholder answer (its
   ``client_msg_id`` is ``bot:<conversation>:<trigger seq>``, so a retried turn after a host
   death finds it instead of logging a second one), stream ``message_delta`` frames as the
   text grows, store the final body in SQL and publish the final frame.

A turn that fails (raises: the embedder, a broken provider stream, SQL) is counted per trigger
and answered with a retry request (``turn_retry``); its sender resends it with backoff
(actors.bot_link). The ``TURN_ATTEMPTS``-th failure of the same trigger posts one error
message as the trigger's answer instead, and the trigger counts as handled.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

from actors.bot_link import BotLink, link_for
from actors.bot_messages import (
    BOT,
    BotConversationInfo,
    BotTurn,
    GetBotState,
    HandBack,
    LinkedHandBack,
    OpenSupport,
    RequestHandoff,
    TurnResult,
    bot_key,
)
from actors.bot_provider import Prompt, cited, provider_for, run_with_retry
from actors.codec import pack, unpack
from actors.context import EntityContext
from actors.entity import Entity, handles
from actors.messages import Append, CreateGroup, MessageEvent
from actors.names import NEW_CONVERSATION_KEY, conv_key, parse_key
from storage.knowledge import Passage
from storage.models import Bot, User
from warbler.errors import ErrorCode, WarblerError
from warbler.protocol import message_delta_payload
from warbler.sealed import open_provider

logger = logging.getLogger(__name__)

_STATE_FORMAT = 1
HANDLED_MAX = 64
PASSAGES_RANKED = 4
# The final body must fit the conversation's body limit with room for the sources.
ANSWER_CHARS_MAX = 8000
# A failing turn runs at most this many times (the first and three resends), then the bot says
# it could not answer.
TURN_ATTEMPTS = 4
TURN_FAILED_TEXT = (
    "Sorry, something went wrong and I could not answer this message. "
    'Please ask again, or type "human" to reach a person.'
)
_HUMAN = re.compile(r"\b(human|agent|person|operator)\b", re.IGNORECASE)


def wants_human(text: str) -> bool:
    """True when a customer asks for a person ("human", "agent", ...)."""
    return bool(_HUMAN.search(text))


@dataclass(slots=True)
class BotConversationState:
    """The bots' memory of one conversation (see the module docstring)."""

    conversation_id: int
    version: int = 0
    handled: list[int] = field(default_factory=list)
    turns: list[float] = field(default_factory=list)
    handed_off: bool = False
    bot_id: int | None = None
    agent_id: int | None = None
    support_id: int | None = None
    origin_id: int | None = None
    answered: int = 0
    budget_noted: bool = False
    # One entry per failed run of a trigger (its seq), until the trigger is handled.
    failures: list[int] = field(default_factory=list)

    def dump(self) -> bytes:
        """Compact msgpack, positional."""
        return pack(
            [
                _STATE_FORMAT,
                self.conversation_id,
                self.version,
                self.handled,
                self.turns,
                self.handed_off,
                self.bot_id,
                self.agent_id,
                self.support_id,
                self.origin_id,
                self.answered,
                self.budget_noted,
                self.failures,
            ]
        )

    @classmethod
    def load(cls, data: bytes) -> BotConversationState:
        """Parse what ``dump`` wrote."""
        fields = unpack(data)
        if fields[0] != _STATE_FORMAT:
            raise WarblerError(ErrorCode.INTERNAL, f"unknown bot state format {fields[0]}")
        return cls(*fields[1:])


class BotEntity(Entity[BotConversationState]):
    """The bots of one conversation."""

    kind = BOT
    __slots__ = ()

    @classmethod
    async def restore(
        cls, key: str, ctx: EntityContext, checkpoint: tuple[int, bytes] | None
    ) -> BotEntity:
        """From the checkpoint, or empty."""
        _, conversation_id = parse_key(key)
        state = (
            BotConversationState.load(checkpoint[1])
            if checkpoint is not None
            else BotConversationState(conversation_id)
        )
        return cls(key, ctx, state)

    def snapshot(self) -> tuple[int, bytes]:
        """Version = changes so far."""
        return self.state.version, self.state.dump()

    def _changed(self) -> None:
        self.state.version += 1
        self.changes += 1

    @property
    def _link(self) -> BotLink:
        return link_for(self.ctx)

    # --- turns ------------------------------------------------------------------------------

    @handles(BotTurn)
    async def turn(self, msg: BotTurn) -> TurnResult:
        """Answer (or not) one member's message; see the module docstring."""
        s = self.state
        if msg.seq in s.handled:
            return TurnResult("duplicate")
        if msg.sender_id in msg.bot_user_ids:
            return TurnResult("silent")  # bots never answer bots
        retried = msg.seq in s.failures
        try:
            result = await self._turn(msg, retried=retried)
        except Exception as exc:
            s.failures.append(msg.seq)
            self._changed()
            attempts = s.failures.count(msg.seq)
            if attempts < TURN_ATTEMPTS:
                logger.warning(
                    "conversation %s: bot turn for seq %s failed (attempt %d of %d): %r",
                    msg.conversation_id,
                    msg.seq,
                    attempts,
                    TURN_ATTEMPTS,
                    exc,
                )
                raise WarblerError(
                    ErrorCode.UNAVAILABLE,
                    "the bot turn failed; resend it later",
                    details={"turn_retry": attempts},
                ) from exc
            logger.error(
                "conversation %s: bot turn for seq %s failed %d times, giving up: %r",
                msg.conversation_id,
                msg.seq,
                attempts,
                exc,
            )
            result = await self._give_up(msg)
        s.handled.append(msg.seq)
        del s.handled[:-HANDLED_MAX]
        s.failures = [seq for seq in s.failures if seq != msg.seq]
        self._changed()
        return result

    async def _give_up(self, msg: BotTurn) -> TurnResult:
        """The trigger's answer becomes one error message: the answer's placeholder (logged
        now, or found where a failed run left it: same ``client_msg_id``) is finished with
        the error, so the trigger never gets both an answer and the error, nor either twice."""
        try:
            addressed, _ = await self._addressed_bots(msg)
            if not addressed:
                return TurnResult("failed")
            bot, cid = addressed[0], msg.conversation_id
            event = await self._placeholder(bot, msg)
            if event.duplicate and (event.body.get("bot") or {}).get("final"):
                return TurnResult("duplicate", event.seq)
            body: dict[str, Any] = {
                "text": TURN_FAILED_TEXT,
                "bot": {"final": True, "bot_id": bot.id, "error": "turn_failed"},
            }
            await self._link.bots.finish_answer(cid, event.seq, bot.user_id, body)
            self.ctx.publisher.publish(
                self.ctx.keys.conv_channel(cid),
                message_delta_payload(cid, event.seq, bot.user_id, TURN_FAILED_TEXT, True, body),
            )
            return TurnResult("failed", event.seq)
        except Exception:
            # Even the error message failed: stop anyway (bounded); the log says why.
            logger.exception(
                "conversation %s: the error message for seq %s failed too",
                msg.conversation_id,
                msg.seq,
            )
            return TurnResult("failed")

    async def _addressed_bots(self, msg: BotTurn) -> tuple[list[Bot], dict[int, User]]:
        bots = await self._link.bots.bots_of_users(msg.bot_user_ids)
        users = {
            u.id: u
            for u in await self.ctx.users.list_users([b.user_id for b in bots] + [msg.sender_id])
        }
        return [b for b in bots if self._addressed(b, users.get(b.user_id), msg)], users

    async def _turn(self, msg: BotTurn, *, retried: bool = False) -> TurnResult:
        s, link = self.state, self._link
        addressed, users = await self._addressed_bots(msg)
        if not addressed:
            return TurnResult("not_addressed")
        if s.handed_off:
            return TurnResult("silent")
        # The window is the minute before the trigger was sent (``sent_at``), so whether a
        # message is answered does not depend on how long the turns ahead of it took.
        sent = msg.sent_at or time.time()
        s.turns = [t for t in s.turns if t > sent - 60.0]
        if not retried:  # a resend of a failed turn was counted when it first ran
            if len(s.turns) >= self.ctx.settings.bot_turns_per_minute:
                logger.info("conversation %s: bot turn limit reached", msg.conversation_id)
                return TurnResult("rate_limited")
            s.turns.append(sent)
        bot = addressed[0]  # one answer per message, from the first bot addressed
        customer = users.get(msg.sender_id)
        if wants_human(msg.text):
            return await self._handoff(bot, msg, customer, "asked for a human")
        if await self._exhausted(bot):
            if s.budget_noted:
                return TurnResult("budget")
            s.budget_noted = True
            seq = await self._post(
                bot,
                f"botn:{msg.conversation_id}:{msg.seq}",
                "Sorry, this assistant has used up its budget for now and cannot answer. "
                'Type "human" to reach a person.',
                {"error": "budget_exhausted"},
            )
            return TurnResult("budget", seq)
        question = re.sub(r"@\w+", " ", msg.text).strip() or msg.text
        index = await link.index(bot)
        query = (await link.embedder.embed([question]))[0]
        hits = index.search(query, PASSAGES_RANKED)
        best = hits[0][0] if hits else 0.0
        if best < bot.min_confidence:
            if bot.support_group_id is not None and hits:
                return await self._handoff(bot, msg, customer, "low confidence")
            hits = []
        return await self._answer(bot, msg, question, hits, best)

    def _addressed(self, bot: Bot, user: User | None, msg: BotTurn) -> bool:
        if msg.conversation_kind == "direct" or bot.answer_all:
            return True
        if user is None:
            return False
        return re.search(rf"@{re.escape(user.username)}\b", msg.text, re.IGNORECASE) is not None

    async def _exhausted(self, bot: Bot) -> bool:
        # ``bot`` was read from SQL for this turn (``_addressed_bots``): its spend is fresh.
        if bot.token_budget > 0 and bot.tokens_used >= bot.token_budget:
            return True
        owner_budget = self.ctx.settings.bot_owner_token_budget
        if owner_budget > 0:
            return await self._link.bots.owner_tokens_used(bot.owner_id) >= owner_budget
        return False

    async def _answer(
        self,
        bot: Bot,
        msg: BotTurn,
        question: str,
        hits: list[tuple[float, Passage]],
        confidence: float,
    ) -> TurnResult:
        link, cid = self._link, msg.conversation_id
        event = await self._placeholder(bot, msg)
        if event.duplicate and (event.body.get("bot") or {}).get("final"):
            return TurnResult("duplicate", event.seq)  # answered before a crash; keep it
        seq, channel = event.seq, self.ctx.keys.conv_channel(cid)
        publisher = self.ctx.publisher

        async def on_text(text: str) -> None:
            delta = message_delta_payload(cid, seq, bot.user_id, text, False)
            publisher.publish(channel, delta)

        prompt = Prompt(bot.system_prompt, question, tuple(hits))
        sources = [
            {"document": p.doc_name, "heading": p.heading, "score": round(score, 3)}
            for score, p in cited(prompt)
        ]
        error: str | None = None
        try:
            # The key is stored sealed (warbler/sealed.py): opened only here, for the call.
            config = open_provider(bot.provider, self.ctx.settings.resolved_secret_key())
            provider = provider_for(config, self.ctx.settings.bot_provider_timeout_s)
            text, tokens = await run_with_retry(
                provider, prompt, on_text, timeout_s=self.ctx.settings.bot_provider_timeout_s
            )
        except WarblerError as exc:
            logger.warning("conversation %s: %s", cid, exc.message)
            text, tokens, error = (
                "Sorry, I cannot answer right now. Please try again.",
                0,
                "provider",
            )
        meta: dict[str, Any] = {
            "final": True,
            "bot_id": bot.id,
            "sources": sources,
            "confidence": round(confidence, 3),
        }
        if error:
            meta["error"] = error
        final_text = text[:ANSWER_CHARS_MAX]
        body: dict[str, Any] = {"text": final_text, "bot": meta}
        # The final body and its cost in one transaction: an answer is never free, nor
        # charged twice, whatever dies when.
        await link.bots.finish_answer(cid, seq, bot.user_id, body, charge=(bot.id, tokens))
        final = message_delta_payload(cid, seq, bot.user_id, final_text, True, body)
        publisher.publish(channel, final)
        self.state.answered += 1
        return TurnResult("answered" if not error else "failed", seq)

    async def _placeholder(self, bot: Bot, msg: BotTurn) -> MessageEvent:
        """The trigger's answer as first logged (or as logged before: same id, same body)."""
        runtime = await self._link.runtime()
        cid = msg.conversation_id
        placeholder = {"text": "", "bot": {"streaming": True, "bot_id": bot.id}}
        return await runtime.call(
            conv_key(cid), Append(bot.user_id, f"bot:{cid}:{msg.seq}", "json", placeholder)
        )

    async def _post(self, bot: Bot, client_msg_id: str, text: str, meta: dict[str, Any]) -> int:
        """Log a complete bot message (notices: budget, handoff)."""
        runtime = await self._link.runtime()
        body = {"text": text, "bot": {"final": True, "bot_id": bot.id, **meta}}
        event = await runtime.call(
            conv_key(self.state.conversation_id),
            Append(bot.user_id, client_msg_id, "json", body),
        )
        return event.seq

    # --- handoff ----------------------------------------------------------------------------

    async def _handoff(
        self, bot: Bot, msg: BotTurn, customer: User | None, reason: str
    ) -> TurnResult:
        """Open a support group (bot, customer, an available agent), tell both sides, and
        stay silent here until an agent hands back."""
        s, cid = self.state, msg.conversation_id
        if bot.support_group_id is None:
            seq = await self._post(
                bot,
                f"botn:{cid}:{msg.seq}",
                "Sorry, no human agents are set up for this assistant.",
                {"error": "no_agents"},
            )
            return TurnResult("answered", seq)
        agent = await self._pick_agent(bot, msg.sender_id)
        if agent is None:
            seq = await self._post(
                bot,
                f"botn:{cid}:{msg.seq}",
                "Sorry, no human agent is available right now. Please try again later.",
                {"error": "no_agents"},
            )
            return TurnResult("answered", seq)
        runtime = await self._link.runtime()
        name = customer.display_name if customer else f"user {msg.sender_id}"
        created = await runtime.call(
            NEW_CONVERSATION_KEY,
            CreateGroup(
                creator_id=bot.user_id,
                title=f"Support: {name}"[:200],
                member_ids=(msg.sender_id, agent),
                op_id=f"handoff:{cid}:{msg.seq}",
            ),
        )
        support = created.conversation_id
        quoted = msg.text[:500]
        await runtime.call(bot_key(support), OpenSupport(cid, agent, bot.id))
        s.handed_off, s.bot_id, s.agent_id, s.support_id = True, bot.id, agent, support
        self._changed()
        await runtime.call(
            conv_key(support),
            Append(
                bot.user_id,
                f"botn:{support}:from:{cid}",
                "json",
                {
                    "text": f"{name} needs help ({reason}). They wrote: \u201c{quoted}\u201d",
                    "bot": {"final": True, "bot_id": bot.id, "handoff": {"origin": cid}},
                },
            ),
        )
        seq = await self._post(
            bot,
            f"botn:{cid}:{msg.seq}",
            "I have asked a human agent to help you; they will answer in the new "
            "conversation \u201cSupport\u201d.",
            {"handoff": {"support_conversation_id": support, "agent_id": agent}},
        )
        return TurnResult("handoff", seq)

    async def _pick_agent(self, bot: Bot, customer_id: int) -> int | None:
        """An agent of the bot's support group: online ones first, spread by conversation."""
        assert bot.support_group_id is not None
        members = await self.ctx.conversations.list_members(bot.support_group_id)
        bot_ids = await self._link.refresh()
        agents = [
            m.user_id for m in members if m.user_id not in bot_ids and m.user_id != customer_id
        ]
        if not agents:
            return None
        online = await self.ctx.presence.online_users(agents)
        pool = [a for a in agents if a in online] or agents
        return pool[self.state.conversation_id % len(pool)]

    @handles(RequestHandoff)
    async def request_handoff(self, msg: RequestHandoff) -> BotConversationInfo:
        """Not used by the gateway's button (it sends "human" as a message, so the request is
        in the log); kept for API callers that want no message."""
        raise WarblerError(ErrorCode.UNSUPPORTED, 'send a message containing "human" instead')

    @handles(HandBack)
    async def hand_back(self, msg: HandBack) -> BotConversationInfo:
        """An agent of the bot's support group gives the conversation back to the bot (on
        the support conversation or the customer's: both are cleared)."""
        s = self.state
        if not s.handed_off or s.bot_id is None:
            raise WarblerError(ErrorCode.CONFLICT, "this conversation is not handed off")
        bot = await self._link.bots.get_bot(s.bot_id)
        if (
            bot is None
            or bot.support_group_id is None
            or (
                await self.ctx.conversations.get_membership(bot.support_group_id, msg.agent_id)
                is None
            )
        ):
            raise WarblerError(
                ErrorCode.FORBIDDEN, "only an agent of the bot's support group hands back"
            )
        linked = s.origin_id or s.support_id
        s.handed_off, s.agent_id = False, None
        s.turns.clear()
        self._changed()
        if linked is not None:
            runtime = await self._link.runtime()
            await runtime.call(bot_key(linked), LinkedHandBack(s.conversation_id))
        target = s.origin_id or s.conversation_id
        await self._post_to(
            bot,
            target,
            f"botn:{target}:back:{s.version}",
            'I am back: ask me anything, or type "human" for a person.',
        )
        return self._info()

    @handles(OpenSupport)
    def open_support(self, msg: OpenSupport) -> BotConversationInfo:
        """A handoff opened this support conversation: silent until an agent hands back."""
        s = self.state
        s.handed_off, s.origin_id, s.agent_id = True, msg.origin_id, msg.agent_id
        s.bot_id = msg.bot_id
        self._changed()
        return self._info()

    @handles(LinkedHandBack)
    def linked_hand_back(self, msg: LinkedHandBack) -> BotConversationInfo:
        """The other side of a hand-back (the first side checked the agent)."""
        s = self.state
        s.handed_off, s.agent_id = False, None
        s.turns.clear()
        self._changed()
        return self._info()

    @handles(GetBotState)
    def get_state(self, msg: GetBotState) -> BotConversationInfo:
        """The handoff state (the gateway checks membership first)."""
        return self._info()

    def _info(self) -> BotConversationInfo:
        s = self.state
        return BotConversationInfo(
            s.conversation_id, s.handed_off, s.agent_id, s.support_id, s.origin_id, s.answered
        )

    async def _post_to(self, bot: Bot, conversation_id: int, cmid: str, text: str) -> None:
        runtime = await self._link.runtime()
        await runtime.call(
            conv_key(conversation_id),
            Append(
                bot.user_id,
                cmid,
                "json",
                {"text": text, "bot": {"final": True, "bot_id": bot.id, "handback": True}},
            ),
        )
