"""Pub/sub benchmark: Redis messages received per second and CPU per message, with redis-py's
own reply parser against hiredis's C parser, in one run.

    python -m loadtest.pubsub_bench [--redis-url URL] [--n N] [--rounds R]

What the gateway's delivery hub does for every conversation event: one ``PubSub.get_message``
per published payload (a message frame of typical size). A pipelined publisher runs in the
same process, so "cpu us" is this process's CPU per message for both sides (the Redis
server's is not counted). Rounds alternate the parsers (python, hiredis, hiredis, python...)
so that a drift of the machine falls on both; the table gives medians. Prints a table and
one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from typing import Any

import redis.asyncio as aioredis
from redis._parsers import _AsyncHiredisParser, _AsyncRESP2Parser

PAYLOAD = (
    b'{"type":"message","conversation_id":12345,"seq":678,"sender_id":42,'
    b'"client_msg_id":"0123456789abcdef0123456789abcdef","kind":"text",'
    b'"body":"hello there, a message of a typical size","created_at":'
    b'"2026-12-03T11:00:00.000000+00:00"}'
)
PARSERS: dict[str, Any] = {"python": _AsyncRESP2Parser, "hiredis": _AsyncHiredisParser}


async def one_round(url: str, parser: Any, n: int) -> tuple[float, float]:
    """(messages/s received, CPU us per message) for ``n`` payloads through one channel."""
    channel = f"bench:pubsub:{uuid.uuid4().hex[:8]}"
    receiver = aioredis.Redis.from_url(url, parser_class=parser)
    sender = aioredis.Redis.from_url(url, parser_class=parser)
    pubsub = receiver.pubsub(ignore_subscribe_messages=True)
    try:
        await pubsub.subscribe(channel)
        while not await sender.publish(channel, b"probe"):
            await asyncio.sleep(0.01)

        async def publish() -> None:
            for _ in range(0, n, 500):
                pipe = sender.pipeline(transaction=False)
                for _ in range(500):
                    pipe.publish(channel, PAYLOAD)
                await pipe.execute()

        cpu0, wall0 = time.process_time(), time.perf_counter()
        task = asyncio.create_task(publish())
        got, heard = 0, time.perf_counter()
        while got < n - n % 500:
            # None also stands for a subscribe confirmation or a probe: only silence counts.
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is not None and message["data"] == PAYLOAD:
                got, heard = got + 1, time.perf_counter()
            elif time.perf_counter() - heard > 5.0:
                raise SystemExit("no message for 5 s: is Redis up?")
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        await task
        return got / wall, cpu * 1e6 / got
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await receiver.aclose()
        await sender.aclose()


async def run(url: str, n: int, rounds: int) -> dict[str, dict[str, float]]:
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in PARSERS}
    for r in range(rounds):
        order = list(PARSERS) if r % 2 == 0 else list(reversed(PARSERS))
        for name in order:
            samples[name].append(await one_round(url, PARSERS[name], n))
    return {
        name: {
            "msgs_per_s": round(statistics.median(s[0] for s in got)),
            "cpu_us_per_msg": round(statistics.median(s[1] for s in got), 1),
        }
        for name, got in samples.items()
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m loadtest.pubsub_bench``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument("--n", type=int, default=20_000, help="messages per round")
    p.add_argument("--rounds", type=int, default=4, help="rounds per parser (alternating)")
    args = p.parse_args(argv)
    figures = asyncio.run(run(args.redis_url, args.n, args.rounds))
    print(f"{'parser':<8}  {'msgs/s':>8}  {'cpu us/msg':>10}")
    for name, f in figures.items():
        print(f"{name:<8}  {f['msgs_per_s']:>8,}  {f['cpu_us_per_msg']:>10}")
    ratio = figures["python"]["cpu_us_per_msg"] / figures["hiredis"]["cpu_us_per_msg"]
    print(f"cpu per message, python / hiredis: {ratio:.2f}")
    print(json.dumps({"bench": "pubsub_parser", "n": args.n, "rounds": args.rounds, **figures}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
