"""UserStore: accounts, uniqueness, search, refresh tokens."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from storage import User, UserStore
from warbler.errors import ErrorCode, WarblerError


async def test_create_and_get_user(users: UserStore, uid: str) -> None:
    user = await users.create_user(f"alice-{uid}", "argon2$hash", "Alice 🐦")
    assert user.id > 0
    assert user.created_at.tzinfo is UTC
    by_id = await users.get_user(user.id)
    assert by_id is not None
    assert (by_id.username, by_id.password_hash, by_id.display_name) == (
        f"alice-{uid}",
        "argon2$hash",
        "Alice 🐦",
    )
    by_name = await users.get_user_by_username(f"alice-{uid}")
    assert by_name is not None and by_name.id == user.id
    assert await users.get_user_by_username(f"nobody-{uid}") is None
    assert await users.get_user(-1) is None


async def test_username_is_unique(users: UserStore, uid: str) -> None:
    await users.create_user(f"bob-{uid}", "h", "Bob")
    with pytest.raises(WarblerError) as err:
        await users.create_user(f"bob-{uid}", "h2", "Other Bob")
    assert err.value.code is ErrorCode.USERNAME_TAKEN
    stored = await users.get_user_by_username(f"bob-{uid}")
    assert stored is not None and stored.password_hash == "h"


async def test_usernames_compare_exactly(users: UserStore, uid: str) -> None:
    # Same behaviour on every engine: MySQL tables use a binary collation.
    lower = await users.create_user(f"carol-{uid}", "h", "c")
    upper = await users.create_user(f"CAROL-{uid}", "h", "C")
    assert lower.id != upper.id
    found = await users.get_user_by_username(f"CAROL-{uid}")
    assert found is not None and found.id == upper.id


@pytest.mark.parametrize(
    ("username", "display_name", "password_hash"),
    [("", "x", "h"), ("u" * 65, "x", "h"), ("ok", "d" * 129, "h"), ("ok", "x", "")],
)
async def test_bad_user_input_is_rejected(
    users: UserStore, uid: str, username: str, display_name: str, password_hash: str
) -> None:
    name = f"{username}{uid}" if username == "ok" else username
    with pytest.raises(WarblerError) as err:
        await users.create_user(name, password_hash, display_name)
    assert err.value.code is ErrorCode.VALIDATION
    if name:
        assert await users.get_user_by_username(name) is None


async def test_list_and_search_users(users: UserStore, uid: str) -> None:
    made = [await users.create_user(f"s{uid}-{n}", "h", n) for n in ("b", "a", "c")]
    await users.create_user(f"t{uid}-x", "h", "x")
    listed = await users.list_users([made[2].id, made[0].id, made[0].id, -5])
    assert [u.id for u in listed] == sorted([made[0].id, made[2].id])
    assert await users.list_users([]) == []
    found = await users.search_users(f"s{uid}-")
    assert [u.username for u in found] == [f"s{uid}-a", f"s{uid}-b", f"s{uid}-c"]
    assert len(await users.search_users(f"s{uid}-", limit=2)) == 2


async def test_search_escapes_like_wildcards(users: UserStore, uid: str) -> None:
    await users.create_user(f"w{uid}_1", "h", "x")
    await users.create_user(f"w{uid}a1", "h", "x")
    found = await users.search_users(f"w{uid}_")
    assert [u.username for u in found] == [f"w{uid}_1"]
    assert await users.search_users(f"w{uid}%") == []


async def test_set_display_name(users: UserStore, uid: str) -> None:
    user = await users.create_user(f"dn-{uid}", "h", "Old")
    updated = await users.set_display_name(user.id, "New name")
    assert updated.display_name == "New name"
    stored = await users.get_user(user.id)
    assert stored is not None and stored.display_name == "New name"
    with pytest.raises(WarblerError) as err:
        await users.set_display_name(-1, "x")
    assert err.value.code is ErrorCode.NOT_FOUND
    with pytest.raises(WarblerError):
        await users.set_display_name(user.id, "x" * 500)
    stored = await users.get_user(user.id)
    assert stored is not None and stored.display_name == "New name"


async def _user(users: UserStore, name: str) -> User:
    return await users.create_user(name, "h", name)


async def test_refresh_tokens(users: UserStore, uid: str) -> None:
    user = await _user(users, f"rt-{uid}")
    before = datetime.now(UTC)
    token = await users.create_refresh_token(user.id, ttl_s=3600)
    assert len(token.id) >= 32
    stored = await users.get_refresh_token(token.id)
    assert stored is not None
    assert stored.user_id == user.id and stored.revoked_at is None
    assert stored.expires_at - before >= timedelta(seconds=3599)
    assert stored.expires_at.tzinfo is UTC
    assert await users.get_refresh_token("no-such-token") is None

    assert await users.revoke_refresh_token(token.id) is True
    assert await users.revoke_refresh_token(token.id) is False  # already revoked: reuse shows
    revoked = await users.get_refresh_token(token.id)
    assert revoked is not None and revoked.revoked_at is not None


async def test_revoke_all_refresh_tokens(users: UserStore, uid: str) -> None:
    user = await _user(users, f"ra-{uid}")
    other = await _user(users, f"rb-{uid}")
    mine = [await users.create_refresh_token(user.id, 60) for _ in range(3)]
    theirs = await users.create_refresh_token(other.id, 60)
    await users.revoke_refresh_token(mine[0].id)
    assert sorted(await users.live_refresh_token_ids(user.id)) == sorted(t.id for t in mine[1:])
    assert await users.revoke_all_refresh_tokens(user.id) == 2
    assert await users.live_refresh_token_ids(user.id) == []
    assert await users.live_refresh_token_ids(other.id) == [theirs.id]
    for token in mine:
        stored = await users.get_refresh_token(token.id)
        assert stored is not None and stored.revoked_at is not None
    kept = await users.get_refresh_token(theirs.id)
    assert kept is not None and kept.revoked_at is None


async def test_refresh_token_for_unknown_user(users: UserStore) -> None:
    with pytest.raises(WarblerError) as err:
        await users.create_refresh_token(-42, 60)
    assert err.value.code is ErrorCode.NOT_FOUND
