"""warbler.logs: JSON lines with the context of the request, one setup for every process."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import pytest

from warbler import logs
from warbler.config import Settings


@pytest.fixture
def captured() -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger("warbler.test.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_line_has_the_fields_and_the_context(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = captured
    with logs.context(request_id="r1", client_msg_id="m-1", conversation_id=42):
        logger.info("stored seq %s", 7, extra={"seq": 7})
    logger.warning("outside")
    inside, outside = _lines(stream)
    assert inside["msg"] == "stored seq 7" and inside["level"] == "INFO"
    assert inside["logger"] == "warbler.test.logs" and "ts" in inside
    assert (inside["request_id"], inside["client_msg_id"], inside["conversation_id"]) == (
        "r1",
        "m-1",
        42,
    )
    assert inside["seq"] == 7
    assert "request_id" not in outside


def test_exceptions_are_one_line(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed")
    [line] = _lines(stream)
    assert "ValueError: boom" in str(line["exc"])


async def test_context_follows_tasks_not_siblings(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = captured

    async def frame(rid: str) -> None:
        logs.bind(request_id=rid)  # a frame's own task, as serve/websocket.py does
        await asyncio.sleep(0)
        logger.info("handled")

    await asyncio.gather(frame("a"), frame("b"))
    logger.info("after")
    ids = [line.get("request_id") for line in _lines(stream)]
    assert sorted(ids[:2]) == ["a", "b"] and ids[2] is None


def test_setup_logging_replaces_its_own_handler() -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    level = root.level
    try:
        logs.setup_logging(Settings(log_format="text"), "test")
        logs.setup_logging(Settings(log_format="json"), "test")
        added = [h for h in root.handlers if h not in before]
        assert len(added) == 1 and isinstance(added[0].formatter, logs.JsonFormatter)
    finally:
        for handler in root.handlers[:]:
            if handler not in before:
                root.removeHandler(handler)
        root.setLevel(level)


def test_text_format_appends_the_context() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", None, None)
    with logs.context(client_msg_id="m-9"):
        line = logs.TextFormatter().format(record)
    assert line.endswith("hello client_msg_id=m-9")
