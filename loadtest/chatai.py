"""`warbler bench chatai`: bot answers/s and time to first token with many customers asking
at once, and the embedder batched vs one by one in the same run.

Against a running cluster (``--host http://127.0.0.1:8000``) or one started here with
``warbler up`` (and stopped after). Every customer opens a socket, DMs the FAQ bot one
question at a time and waits for its final answer; time to first token is from the send to
the first ``message_delta`` of the answer, answer time to the final one.

The embedder comparison runs in this process on the same model: the questions embedded in
batches of ``--batch`` (what the Serve deployment's ``@serve.batch`` does with concurrent
callers) and one by one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import websockets

from loadtest.servers import warbler_cluster

TOPICS = [
    ("How do I reset my password?", "Open Settings, choose Security and press Reset password."),
    ("What are your opening hours?", "Our shops open from 9:00 to 18:00, Monday to Saturday."),
    ("Can I return an item?", "Yes, within 30 days with the receipt, in a shop or by post."),
    ("How much is shipping?", "Shipping is free above 50 euros, else 4.90 euros."),
    ("Do you ship abroad?", "We ship to every EU country within five working days."),
    ("How do I change my address?", "Open Settings, then Addresses, and edit the default one."),
    ("Which payment methods do you take?", "Cards, bank transfer and PayPal."),
    ("How do I cancel an order?", "Open Orders and press Cancel before it ships."),
]
QUESTIONS = [
    "I forgot my password, what now?",
    "when are you open on saturday?",
    "can I send back a jacket I bought?",
    "is delivery free?",
    "do you deliver to Italy?",
    "I moved, how do I update where you send things?",
    "can I pay with paypal?",
    "I want to cancel what I ordered",
]


# How long a customer waits for the next frame of an answer before counting it as missing
# (the bot's own turn timeout is WARBLER_BOT_TURN_TIMEOUT_S, 120 s by default).
ANSWER_TIMEOUT_S = 150.0


def faq_markdown() -> str:
    """The benchmark bot's knowledge base."""
    return "# FAQ\n\n" + "\n\n".join(f"## {q}\n{a}" for q, a in TOPICS) + "\n"


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of values, 0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


async def _account(http: httpx.AsyncClient, label: str) -> tuple[int, str]:
    name = f"{label}-{uuid.uuid4().hex[:10]}"
    password = "correct horse battery"
    r = await http.post("/v1/auth/register", json={"username": name, "password": password})
    r.raise_for_status()
    r = await http.post("/v1/auth/login", json={"username": name, "password": password})
    r.raise_for_status()
    body = r.json()
    return int(body["user"]["id"]), str(body["access_token"])


class Tally:
    """What the customers saw: timings, and each question that got no answer and why."""

    def __init__(self) -> None:
        self.ttft: list[float] = []
        self.answer_s: list[float] = []
        self.done: list[float] = []
        self.failed: list[str] = []
        self.answers_before_ack = 0


async def _customer(
    ws_url: str, token: str, bot_user_id: int, questions: int, index: int, tally: Tally
) -> None:
    async with websockets.connect(ws_url, open_timeout=60) as ws:
        await ws.send(json.dumps({"type": "hello", "protocol": 1, "token": token, "id": "h"}))
        while json.loads(await ws.recv()).get("type") != "hello_ok":
            pass
        for n in range(questions):
            text = QUESTIONS[(index + n) % len(QUESTIONS)]
            cmid = uuid.uuid4().hex
            sent = time.perf_counter()
            await ws.send(
                json.dumps(
                    {
                        "type": "send",
                        "id": cmid,
                        "client_msg_id": cmid,
                        "to_user_id": bot_user_id,
                        "kind": "text",
                        "body": text,
                    }
                )
            )
            outcome = await _answer(ws, cmid, sent, tally)
            if outcome:
                # One line per miss, so it can be followed in the cluster's logs.
                tally.failed.append(f"customer {index} question {n} ({cmid}): {outcome}")


async def _answer(ws: Any, cmid: str, sent: float, tally: Tally) -> str:
    """Wait for one question's ack and final answer: "" when answered, else what was missing.

    The answer's frames may come before the question's ack: the ack returns through the
    gateway's call to the host, the answer through the event bus, and an extractive answer
    takes only milliseconds. Frames seen before the ack are kept until it says which seq
    the question got."""
    first: float | None = None
    trigger: int | None = None
    early: list[tuple[float, dict[str, Any]]] = []
    while True:
        try:
            frame = json.loads(await asyncio.wait_for(ws.recv(), ANSWER_TIMEOUT_S))
        except TimeoutError:
            if trigger is None:
                return "no ack"
            return f"no {'final ' if first else ''}answer to seq {trigger}"
        now = time.perf_counter()
        if frame.get("type") == "error" and frame.get("id") == cmid:
            return f"send refused: {frame.get('code')}"
        if frame.get("type") == "ack" and frame.get("id") == cmid:
            trigger = frame["seq"]
            if early:
                tally.answers_before_ack += 1
            pending, early = early, []
        elif frame.get("type") == "message_delta":
            pending = [(now, frame)]
            if trigger is None:
                early.extend(pending)
                continue
        else:
            continue
        for at, delta in pending:
            if trigger is None or delta["seq"] <= trigger:
                continue
            if first is None:
                first = at
                tally.ttft.append(at - sent)
            if delta["final"]:
                tally.answer_s.append(at - sent)
                tally.done.append(at)
                return ""


async def measure(base_url: str, customers: int, questions: int) -> dict[str, Any]:
    """Create a FAQ bot, let ``customers`` ask ``questions`` each; the figures."""
    async with httpx.AsyncClient(base_url=base_url, timeout=120) as http:
        _, owner = await _account(http, "bench-owner")
        headers = {"Authorization": f"Bearer {owner}"}
        r = await http.post(
            "/v1/bots", json={"username": f"faq-{uuid.uuid4().hex[:8]}"}, headers=headers
        )
        r.raise_for_status()
        bot = r.json()
        r = await http.put(
            f"/v1/bots/{bot['id']}/documents/faq.md",
            content=faq_markdown().encode(),
            headers={**headers, "Content-Type": "text/markdown"},
        )
        r.raise_for_status()
        tokens = [
            t
            for _, t in await asyncio.gather(
                *(_account(http, "bench-cust") for _ in range(customers))
            )
        ]
    ws_url = base_url.replace("http", "ws", 1) + "/v1/ws"
    tally = Tally()
    start = time.perf_counter()
    await asyncio.gather(
        *(_customer(ws_url, t, bot["user_id"], questions, i, tally) for i, t in enumerate(tokens))
    )
    for line in tally.failed:
        print(f"unanswered: {line}", file=sys.stderr)
    ttft, answer_s, done = tally.ttft, tally.answer_s, tally.done
    elapsed = (max(done) if done else time.perf_counter()) - start
    return {
        "customers": customers,
        "answers": len(answer_s),
        "unanswered": len(tally.failed),
        "answers_before_ack": tally.answers_before_ack,
        "answers_per_s": round(len(answer_s) / elapsed, 1) if elapsed > 0 else 0.0,
        "ttft_p50_ms": round(1000 * statistics.median(ttft), 1) if ttft else 0.0,
        "ttft_p99_ms": round(1000 * percentile(ttft, 99), 1),
        "answer_p50_ms": round(1000 * statistics.median(answer_s), 1) if answer_s else 0.0,
        "answer_p99_ms": round(1000 * percentile(answer_s, 99), 1),
    }


def embedder_comparison(n: int, batch: int) -> dict[str, Any]:
    """Texts/s of the model embedding ``n`` questions in batches of ``batch`` vs one by one."""
    from actors.bot_embedding import SentenceEmbedder

    model = SentenceEmbedder()
    texts = [QUESTIONS[i % len(QUESTIONS)] + f" ({i})" for i in range(n)]
    model.embed(texts[:2])  # warm up
    t0 = time.perf_counter()
    for i in range(0, n, batch):
        model.embed(texts[i : i + batch])
    batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    for text in texts:
        model.embed([text])
    single = time.perf_counter() - t0
    return {
        "embed_texts": n,
        "embed_batch": batch,
        "embed_batched_per_s": round(n / batched, 1),
        "embed_single_per_s": round(n / single, 1),
        "embed_speedup": round(single / batched, 2),
    }


@contextlib.contextmanager
def _target(args: argparse.Namespace) -> Iterator[str]:
    if args.host:
        yield args.host.rstrip("/")
        return
    with warbler_cluster(args.data_dir.resolve()) as target:
        yield target.base_url


def main(argv: list[str] | None = None) -> int:
    """Entry point of `warbler bench chatai`."""
    p = argparse.ArgumentParser(prog="warbler bench chatai", description=__doc__)
    p.add_argument("--host", help="a running cluster; default: start one with `warbler up`")
    p.add_argument("--data-dir", type=Path, default=Path(".warbler/bench"))
    p.add_argument("--customers", type=int, default=100)
    p.add_argument("--questions", type=int, default=3, help="questions per customer")
    p.add_argument("--batch", type=int, default=32, help="embedder batch for the comparison")
    args = p.parse_args(argv)
    figures = embedder_comparison(max(args.customers, args.batch), args.batch)
    with _target(args) as url:
        figures.update(asyncio.run(measure(url, args.customers, args.questions)))
    width = max(len(k) for k in figures)
    for key, value in figures.items():
        print(f"{key:<{width}}  {value}")
    print(json.dumps({"scenario": "chatai", **figures}), flush=True)
    return 1 if figures["unanswered"] else 0


if __name__ == "__main__":
    sys.exit(main())
