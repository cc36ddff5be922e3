"""Storage benchmark: message appends/s with group commit vs one transaction per message.

    python -m loadtest.storage_bench [--engines sqlite,postgresql,mysql] [--n N]

Each engine gets a fresh database (a temp SQLite file; a uniquely named database on PostgreSQL
and MariaDB/MySQL, dropped afterwards). Both modes run the same code (``storage.writer``):
"group" sends ``--n`` appends from ``--concurrency`` concurrent senders over as many group
conversations through one ``GroupCommitWriter``; "portable" does the same with the SQL every
engine runs (``portable_sql=True``, what MySQL 8 gets); "per-message" has the same senders each
commit every message in its own transaction (the writer's commit path with a batch of one) on
the pool. "cpu us" is this process's CPU time per group append (the database's is not counted).
Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import insert, text
from sqlalchemy.engine import make_url

from storage import Database, GroupCommitWriter, MessageDraft, SeqCounter
from storage.appends import store_batch
from storage.models import Conversation, Membership, User
from storage.types import utcnow

DEFAULT_URLS = {
    "sqlite": "",  # a temp file
    "postgresql": "postgresql+asyncpg://postgres@127.0.0.1:5432/test",
    "mysql": "mysql+aiomysql://root@127.0.0.1:3306/test",
}


@dataclass
class Result:
    """The figures of one engine."""

    engine: str
    group_appends_per_s: float
    group_n: int
    group_batches: int
    group_avg_batch: float
    group_cpu_us_per_append: float
    group_portable_sql_appends_per_s: float
    single_appends_per_s: float
    single_n: int
    ratio: float


def _reachable(url: str) -> bool:
    parsed = make_url(url)
    try:
        with socket.create_connection((parsed.host or "127.0.0.1", parsed.port or 0), timeout=1):
            return True
    except OSError:
        return False


class _FreshDatabase:
    """A new empty database on one engine, dropped on exit."""

    def __init__(self, engine: str, admin_url: str) -> None:
        self.engine = engine
        self.admin_url = admin_url
        self.name = f"warbler_bench_{uuid.uuid4().hex[:10]}"
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.url = ""

    async def __aenter__(self) -> str:
        if self.engine == "sqlite":
            self._tmp = tempfile.TemporaryDirectory(prefix="warbler-bench-")
            self.url = f"sqlite+aiosqlite:///{Path(self._tmp.name) / 'bench.db'}"
            return self.url
        admin = Database(self.admin_url)
        try:
            async with admin.engine.execution_options(isolation_level="AUTOCOMMIT").connect() as c:
                await c.execute(text(f"CREATE DATABASE {self.name}"))
        finally:
            await admin.close()
        self.url = make_url(self.admin_url).set(database=self.name).render_as_string(False)
        return self.url

    async def __aexit__(self, *exc: object) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            return
        admin = Database(self.admin_url)
        force = " WITH (FORCE)" if self.engine == "postgresql" else ""
        try:
            async with admin.engine.execution_options(isolation_level="AUTOCOMMIT").connect() as c:
                await c.execute(text(f"DROP DATABASE IF EXISTS {self.name}{force}"))
        finally:
            await admin.close()


async def _setup(db: Database, senders: int) -> list[tuple[int, int]]:
    """``senders`` users, each the owner of one group: [(user id, conversation id)]."""
    now = utcnow()
    users: Any = User.__table__  # type: ignore[attr-defined]
    convs: Any = Conversation.__table__  # type: ignore[attr-defined]
    members: Any = Membership.__table__  # type: ignore[attr-defined]
    tag = uuid.uuid4().hex[:6]
    async with db.engine.begin() as conn:
        await conn.execute(
            insert(users),
            [
                {
                    "username": f"bench-{tag}-{i}",
                    "password_hash": "x",
                    "display_name": f"Bench {i}",
                    "created_at": now,
                }
                for i in range(senders)
            ],
        )
        user_ids = [
            r[0]
            for r in await conn.execute(
                text("SELECT id FROM users WHERE username LIKE :p ORDER BY id"),
                {"p": f"bench-{tag}-%"},
            )
        ]
        await conn.execute(
            insert(convs),
            [
                {"kind": "group", "title": f"bench {u}", "created_by": u, "created_at": now}
                for u in user_ids
            ],
        )
        conv_ids = [
            r[0]
            for r in await conn.execute(
                text("SELECT id FROM conversations ORDER BY id DESC LIMIT :n"), {"n": senders}
            )
        ][::-1]
        pairs = list(zip(user_ids, conv_ids, strict=True))
        await conn.execute(
            insert(members),
            [
                {
                    "conversation_id": c,
                    "user_id": u,
                    "role": "owner",
                    "joined_at": now,
                    "read_seq": 0,
                }
                for u, c in pairs
            ],
        )
    return pairs


async def _drive(
    pairs: list[tuple[int, int]],
    counters: dict[int, SeqCounter],
    n: int,
    prefix: str,
    append: Callable[[MessageDraft, SeqCounter], Awaitable[object]],
) -> tuple[float, float]:
    """Send ``n`` appends spread over the senders, each sender awaiting each ack.
    Returns appends/s and this process's CPU microseconds per append."""
    per_sender = max(1, n // len(pairs))

    async def sender(user_id: int, conv_id: int) -> None:
        counter = counters[conv_id]
        for i in range(per_sender):
            body = {"text": f"message {i} from {user_id}"}
            await append(MessageDraft(conv_id, user_id, f"{prefix}-{i}", "text", body), counter)

    start, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(sender(u, c) for u, c in pairs))
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    total = per_sender * len(pairs)
    return total / elapsed, cpu / total * 1e6


async def bench_engine(
    engine: str, url: str, n: int, concurrency: int, single_n: int, max_batch: int = 512
) -> Result:
    """Run both modes on a fresh database of ``engine``."""
    async with _FreshDatabase(engine, url) as fresh_url:
        db = Database(fresh_url)
        try:
            await db.migrate()
            pairs = await _setup(db, concurrency)
            # Each conversation's counter lives as long as the conversation, as in its entity.
            counters = {conv: SeqCounter() for _, conv in pairs}

            # Warm up the pool and statement caches, then measure group commit.
            writer = GroupCommitWriter(db, max_batch=max_batch)
            await writer.start()
            await _drive(pairs, counters, len(pairs) * 2, "warm", writer.append)
            writer.batches = writer.appended = 0
            group_rate, group_cpu = await _drive(pairs, counters, n, "group", writer.append)
            batches, appended = writer.batches, writer.appended
            await writer.stop()

            # The same with the SQL every engine runs (insertmanyvalues), as on MySQL 8.
            portable = GroupCommitWriter(db, max_batch=max_batch, portable_sql=True)
            await portable.start()
            portable_rate, _ = await _drive(pairs, counters, n, "portable", portable.append)
            await portable.stop()

            async def one_transaction(draft: MessageDraft, counter: SeqCounter) -> object:
                # The writer's own commit path, one message at a time, from the pool.
                return await store_batch(db, [(draft, counter)])

            single_rate, _ = await _drive(pairs, counters, single_n, "single", one_transaction)
        finally:
            await db.close()
    return Result(
        engine=engine,
        group_appends_per_s=round(group_rate),
        group_n=appended,
        group_batches=batches,
        group_avg_batch=round(appended / max(batches, 1), 1),
        group_cpu_us_per_append=round(group_cpu, 1),
        group_portable_sql_appends_per_s=round(portable_rate),
        single_appends_per_s=round(single_rate),
        single_n=max(1, single_n // len(pairs)) * len(pairs),
        ratio=round(group_rate / single_rate, 1),
    )


def _print_table(results: list[Result]) -> None:
    header = (
        f"{'engine':<11} {'group/s':>9} {'batches':>8} {'avg batch':>9} {'cpu us':>7}"
        f" {'portable/s':>10} {'1 tx/msg/s':>10} {'ratio':>6}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.engine:<11} {r.group_appends_per_s:>9,.0f} {r.group_batches:>8} "
            f"{r.group_avg_batch:>9} {r.group_cpu_us_per_append:>7} "
            f"{r.group_portable_sql_appends_per_s:>10,.0f} "
            f"{r.single_appends_per_s:>10,.0f} {r.ratio:>5}x"
        )


async def main_async(args: argparse.Namespace) -> list[Result]:
    """Benchmark every engine asked for (by default every reachable one)."""
    urls = {"sqlite": "", "postgresql": args.postgresql_url, "mysql": args.mysql_url}
    engines = args.engines.split(",") if args.engines else list(urls)
    results = []
    for engine in engines:
        if engine not in urls:
            raise SystemExit(f"unknown engine {engine!r}; choose from {', '.join(urls)}")
        if engine != "sqlite" and not _reachable(urls[engine]):
            if args.engines:
                raise SystemExit(f"{engine} is not reachable at {urls[engine]}")
            continue
        results.append(
            await bench_engine(
                engine, urls[engine], args.n, args.concurrency, args.single_n, args.max_batch
            )
        )
    return results


def main() -> None:
    """Entry point of ``python -m loadtest.storage_bench``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", default="", help="comma-separated: sqlite,postgresql,mysql")
    parser.add_argument("--n", type=int, default=40_000, help="appends in group-commit mode")
    parser.add_argument(
        "--single-n", type=int, default=3_000, help="appends in one-transaction-per-message mode"
    )
    parser.add_argument("--concurrency", type=int, default=2000, help="concurrent senders")
    parser.add_argument(
        "--max-batch", type=int, default=512, help="GroupCommitWriter max_batch (its default: 512)"
    )
    parser.add_argument("--postgresql-url", default=DEFAULT_URLS["postgresql"])
    parser.add_argument("--mysql-url", default=DEFAULT_URLS["mysql"])
    args = parser.parse_args()
    results = asyncio.run(main_async(args))
    _print_table(results)
    print(
        json.dumps(
            {
                "bench": "storage_appends",
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": f"{platform.machine()} {os.cpu_count()} cores",
                "concurrency": args.concurrency,
                "max_batch": args.max_batch,
                "results": [asdict(r) for r in results],
            }
        )
    )


if __name__ == "__main__":
    main()
