"""Pure parts of the gateway, no I/O: tokens, the rate limiter, a socket's ordering rules, and
the protocol's frame parsing."""

from __future__ import annotations

import asyncio

import pytest

from serve.delivery import Connection, LiveMessage
from serve.ratelimit import SendRateLimiter
from serve.tokens import TokenSigner
from warbler.errors import ErrorCode, WarblerError
from warbler.protocol import (
    ErrorFrame,
    HelloFrame,
    SendFrame,
    dump_frame,
    parse_client_frame,
    parse_server_frame,
)


def test_access_token_round_trip_and_refusals() -> None:
    signer = TokenSigner("k1", access_ttl_s=60)
    token = signer.issue_access(7, "sess", now=1000)
    claims = signer.verify_access(token, now=1030)
    assert (claims.user_id, claims.session_id, claims.expires_at) == (7, "sess", 1060)
    with pytest.raises(WarblerError) as expired:
        signer.verify_access(token, now=1061)
    assert expired.value.code == ErrorCode.TOKEN_EXPIRED
    for bad in (token[:-2] + "xx", "v1.abc", "v2." + token[3:], "", "x" * 5000):
        with pytest.raises(WarblerError) as refused:
            signer.verify_access(bad, now=1030)
        assert refused.value.code == ErrorCode.UNAUTHENTICATED
    with pytest.raises(WarblerError):
        TokenSigner("k2", 60).verify_access(token, now=1030)  # another cluster's key


def test_refresh_token_wrapping() -> None:
    signer = TokenSigner("k1", 60)
    wrapped = signer.wrap_refresh("row-id.with.dots")
    assert signer.unwrap_refresh(wrapped) == "row-id.with.dots"
    for bad in ("row-id", wrapped + "x", "." + wrapped.rpartition(".")[2]):
        with pytest.raises(WarblerError):
            signer.unwrap_refresh(bad)


def test_rate_limiter_bucket() -> None:
    limiter = SendRateLimiter(rate_per_s=10, burst=3)
    assert [limiter.try_take(1, now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.try_take(1, now=0.0)
    assert wait == pytest.approx(0.1)
    assert limiter.try_take(2, now=0.0) == 0.0  # users do not share a bucket
    assert limiter.try_take(1, now=0.1) == 0.0  # refilled


def test_rate_limiter_splits_a_users_rate_across_the_replicas_of_their_devices() -> None:
    limiter = SendRateLimiter(rate_per_s=2, burst=4)
    limiter.set_share(1, 2)  # devices on two replicas: half the rate and burst here
    assert [limiter.try_take(1, now=0.0) for _ in range(2)] == [0.0, 0.0]
    assert limiter.try_take(1, now=0.0) == pytest.approx(1.0)  # 1/s here
    assert limiter.try_take(1, now=1.0) == 0.0
    limiter.set_share(1, 1)  # the other device left: the whole rate again
    assert limiter.try_take(1, now=1.5) == 0.0
    assert limiter.try_take(1, now=1.5) == pytest.approx(0.5)  # refills at 2/s now
    assert limiter.try_take(2, now=0.0) == 0.0  # another user keeps the full share


def _msg(seq: int, sender: int = 9, cmid: str = "") -> LiveMessage:
    return LiveMessage(1, seq, sender, cmid or f"c{seq}", f'{{"seq":{seq}}}')


async def test_connection_orders_buffers_and_dedupes() -> None:
    sent: list[str] = []

    async def send(text: str) -> None:
        sent.append(text)

    conn = Connection(send, user_id=5, device_id="d", max_queue=100)
    conn.delivered[1] = 3
    assert conn.offer(_msg(3)) is None  # already held: dropped
    assert conn.offer(_msg(4)) is None  # next: sent
    assert conn.offer(_msg(6)) == 4  # a gap after 4: the caller fills it
    conn.begin_sync(1)
    assert conn.offer(_msg(7)) is None  # buffered while syncing
    conn.send_history(1, 5, 9, "c5", '{"seq":5}')
    conn.send_history(1, 6, 9, "c6", '{"seq":6}')
    released = conn.end_sync(1)
    assert [m.seq for m in released] == [7]
    assert conn.offer(released[0]) is None
    conn.note_own_send("mine")
    assert conn.offer(_msg(8, sender=5, cmid="mine")) is None  # own send: acked, not echoed
    assert conn.delivered[1] == 8
    writer = asyncio.get_running_loop().create_task(conn.run_writer())
    await asyncio.sleep(0.05)
    conn.stop()
    await asyncio.gather(writer, return_exceptions=True)
    assert sent == ['{"seq":4}', '{"seq":5}', '{"seq":6}', '{"seq":7}']


def test_slow_socket_is_asked_to_close() -> None:
    async def send(text: str) -> None:
        return None

    conn = Connection(send, user_id=5, device_id="d", max_queue=2)
    for i in range(3):
        conn.send(str(i))
    assert conn.overflowed and conn.close_code == 1013 and conn.close_event.is_set()


def test_frame_parsing() -> None:
    hello = parse_client_frame('{"type":"hello","cursors":{"12":5},"token":"t"}')
    assert isinstance(hello, HelloFrame) and hello.cursors == {12: 5}
    send = parse_client_frame(
        '{"type":"send","id":3,"conversation_id":4,"client_msg_id":"a","kind":"json","body":{}}'
    )
    assert isinstance(send, SendFrame) and send.body == {}
    with pytest.raises(WarblerError) as bad:
        parse_client_frame('{"type":"send","id":"q","client_msg_id":"a","body":"x"}')
    assert bad.value.code == ErrorCode.VALIDATION and bad.value.details["request_id"] == "q"
    with pytest.raises(WarblerError) as not_json:
        parse_client_frame(b"\xff")
    assert not_json.value.code == ErrorCode.BAD_REQUEST
    err = ErrorFrame.from_error(WarblerError(ErrorCode.NOT_MEMBER, "no"), 3)
    back = parse_server_frame(dump_frame(err))
    assert isinstance(back, ErrorFrame) and back.code == ErrorCode.NOT_MEMBER and back.id == 3
