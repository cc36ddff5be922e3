"""The generator's frames are what the protocol's own parser accepts."""

from __future__ import annotations

from loadtest.frames import (
    MIN_BODY_BYTES,
    is_ours,
    message_id,
    read_stamp,
    send_frame,
    stamp_body,
)
from warbler.protocol import SendFrame, parse_client_frame


def test_send_frame_parses_as_the_protocols_send() -> None:
    cmid = message_id("run1", 3, 7)
    body = stamp_body(1_700_000_000_123_456_789, 64)
    frame = parse_client_frame(send_frame(7, cmid, body, conversation_id=12))
    assert isinstance(frame, SendFrame)
    assert (frame.id, frame.conversation_id, frame.client_msg_id) == (7, 12, cmid)
    assert frame.kind == "text" and frame.body == body
    to_user = parse_client_frame(send_frame(8, cmid, body, to_user_id=42))
    assert isinstance(to_user, SendFrame) and to_user.to_user_id == 42


def test_body_stamp_round_trip_and_size() -> None:
    body = stamp_body(1_700_000_000_123_456_789, 100)
    assert len(body.encode()) == 100
    assert read_stamp(body) == 1_700_000_000_123_456_789
    assert len(stamp_body(1_700_000_000_123_456_789, 0)) == MIN_BODY_BYTES
    assert read_stamp("hello there") is None
    assert read_stamp({"t": 1}) is None


def test_run_ids_tell_runs_apart() -> None:
    cmid = message_id("abc", 1, 2)
    assert is_ours(cmid, "abc")
    assert not is_ours(cmid, "ab")
    assert not is_ours("someone-else", "abc")
