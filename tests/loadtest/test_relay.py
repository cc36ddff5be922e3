"""The baseline relay relays, and the bench's accounting catches real loss and duplicates.

Real sockets against the relay in a child process; no timing thresholds (waits are bounded
only so a broken relay fails the test instead of hanging it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from loadtest.accounting import Ledger
from loadtest.accounts import Account, create_group, open_directs, provision
from loadtest.device import Device
from loadtest.frames import send_frame
from loadtest.servers import Target
from loadtest.wsconn import WsConnection
from warbler.protocol import AckFrame, HelloFrame, dump_frame, parse_server_frame


async def until(condition: Callable[[], bool], timeout_s: float = 15.0) -> None:
    """Wait, bounded, for frames to make a condition true."""
    for _ in range(int(timeout_s / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)


async def accounts(relay: Target, uid: str, n: int) -> list[Account]:
    return await provision(relay.base_url, [f"t{uid}u{i}" for i in range(n)])


def device(relay: Target, account: Account, ledger: Ledger, key: str, run: str) -> Device:
    return Device(
        ws_url=relay.ws_url, key=key, user_id=account.user_id, token=account.access_token,
        device_id=key, run_id=run, sender_index=1, ledger=ledger,
    )


async def test_direct_messages_are_relayed_once_each(relay: Target, uid: str) -> None:
    alice, bob = await accounts(relay, uid, 2)
    (conv,) = await open_directs(relay.base_url, [(alice, bob)])
    ledger = Ledger()
    sender, receiver = device(relay, alice, ledger, "a", uid), device(relay, bob, ledger, "b", uid)
    await sender.connect()
    await receiver.connect()
    for _ in range(20):
        sender.send(expected=1, body_bytes=64, conversation_id=conv)
    await until(lambda: ledger.summary().delivered == 20)
    summary = ledger.summary()
    assert (summary.sent, summary.acked, summary.delivered) == (20, 20, 20)
    assert (summary.lost, summary.duplicated, summary.unacked) == (0, 0, 0)
    assert receiver.cursors[conv] == sender.cursors[conv] == 20  # gapless seqs 1..20
    await sender.close()
    await receiver.close()


async def test_group_fan_out_reaches_every_member(relay: Target, uid: str) -> None:
    owner, *members = await accounts(relay, uid, 4)
    conv = await create_group(relay.base_url, owner, members, "t")
    ledger = Ledger()
    sender = device(relay, owner, ledger, "o", uid)
    receivers = [device(relay, m, ledger, f"m{i}", uid) for i, m in enumerate(members)]
    for d in [sender, *receivers]:
        await d.connect()
    for _ in range(5):
        sender.send(expected=3, body_bytes=32, conversation_id=conv)
    await until(lambda: ledger.summary().delivered == 15)
    summary = ledger.summary()
    assert summary.delivered == 15 and summary.lost == 0 and summary.duplicated == 0
    assert summary.fanout.count == 5  # every message reached its last member
    for d in [sender, *receivers]:
        await d.close()


async def test_a_device_that_never_came_counts_as_lost(relay: Target, uid: str) -> None:
    owner, online, offline = await accounts(relay, uid, 3)
    conv = await create_group(relay.base_url, owner, [online, offline], "t")
    ledger = Ledger()
    sender = device(relay, owner, ledger, "o", uid)
    receiver = device(relay, online, ledger, "r", uid)
    await sender.connect()
    await receiver.connect()
    for _ in range(4):
        sender.send(expected=2, body_bytes=32, conversation_id=conv)  # offline has no socket
    await until(lambda: ledger.summary().delivered == 4)
    summary = ledger.summary()
    assert summary.acked == 4 and summary.lost == 4 and summary.duplicated == 0
    await sender.close()
    await receiver.close()


async def test_a_replayed_sync_counts_as_duplicated(relay: Target, uid: str) -> None:
    alice, bob = await accounts(relay, uid, 2)
    (conv,) = await open_directs(relay.base_url, [(alice, bob)])
    ledger = Ledger()
    sender, receiver = device(relay, alice, ledger, "a", uid), device(relay, bob, ledger, "b", uid)
    await sender.connect()
    await receiver.connect()
    for _ in range(6):
        sender.send(expected=1, body_bytes=32, conversation_id=conv)
    await until(lambda: ledger.summary().delivered == 6)
    receiver.request_sync({conv: 2})  # asks again for seqs 3..6, which it already has
    done = await receiver.wait_synced()
    assert done.cursors[conv] == 6
    summary = ledger.summary()
    assert summary.delivered == 6 and summary.duplicated == 4 and summary.lost == 0
    await sender.close()
    await receiver.close()


async def test_a_device_that_was_away_catches_up_from_its_cursor(relay: Target, uid: str) -> None:
    alice, bob = await accounts(relay, uid, 2)
    (conv,) = await open_directs(relay.base_url, [(alice, bob)])
    ledger = Ledger()
    sender, away = device(relay, alice, ledger, "a", uid), device(relay, bob, ledger, "b", uid)
    await sender.connect()
    for _ in range(30):
        sender.send(expected=1, body_bytes=32, conversation_id=conv)
    await until(lambda: ledger.summary().acked == 30)
    await away.connect(cursors={conv: 0})  # returns after sync_done
    summary = ledger.summary()
    assert summary.delivered == 30 and summary.lost == 0 and summary.duplicated == 0
    await sender.close()
    await away.close()


async def test_resending_a_client_msg_id_acks_the_same_seq(relay: Target, uid: str) -> None:
    alice, bob = await accounts(relay, uid, 2)
    (conv,) = await open_directs(relay.base_url, [(alice, bob)])
    acks: list[AckFrame] = []

    def on_text(text: str) -> None:
        frame = parse_server_frame(text)
        if isinstance(frame, AckFrame):
            acks.append(frame)

    conn = await WsConnection.open(relay.ws_url, on_text=on_text)
    conn.send_text(dump_frame(HelloFrame(token=alice.access_token)))
    frame = send_frame(1, f"{uid}.1.1", "hello there", conversation_id=conv)
    conn.send_text(frame)
    conn.send_text(frame)
    await until(lambda: len(acks) == 2)
    assert [a.seq for a in acks] == [acks[0].seq, acks[0].seq]
    assert [a.duplicate for a in acks] == [False, True]
    conn.close()
    await asyncio.wait_for(conn.closed, 10)
