"""Who may do what in a group. Roles rank owner > admin > member.

- Any member reads the log, appends, marks read and gets the info.
- Owner and admins add members and rename the group; only the owner adds admins.
- The owner removes anyone else; an admin removes plain members only; nobody removes
  themself (they leave).
- Only the owner changes roles; making someone owner transfers ownership (the old owner
  becomes an admin).
- Anyone can leave; an owner leaving hands ownership to the oldest admin, else to the oldest
  member.
- Direct conversations have exactly their two members: no membership changes, no title.
"""

from __future__ import annotations

from collections.abc import Mapping

from warbler.errors import ErrorCode, WarblerError

ROLES = ("owner", "admin", "member")
_RANK = {"owner": 0, "admin": 1, "member": 2}


def require_member(members: Mapping[int, str], user_id: int, conversation_id: int) -> str:
    """The role of ``user_id``, or NOT_MEMBER."""
    role = members.get(user_id)
    if role is None:
        raise WarblerError(
            ErrorCode.NOT_MEMBER,
            f"user {user_id} is not a member of conversation {conversation_id}",
        )
    return role


def require_manager(role: str, action: str) -> None:
    """Owner or admin, or FORBIDDEN."""
    if _RANK[role] > _RANK["admin"]:
        raise WarblerError(ErrorCode.FORBIDDEN, f"only the owner or an admin may {action}")


def require_owner(role: str, action: str) -> None:
    """Owner, or FORBIDDEN."""
    if role != "owner":
        raise WarblerError(ErrorCode.FORBIDDEN, f"only the owner may {action}")


def check_add(actor_role: str, new_role: str) -> None:
    """May ``actor_role`` add members with ``new_role``?"""
    if new_role not in ("admin", "member"):
        raise WarblerError(ErrorCode.VALIDATION, "new members join as admin or member")
    require_manager(actor_role, "add members")
    if new_role == "admin":
        require_owner(actor_role, "add admins")


def check_remove(actor_role: str, target_role: str) -> None:
    """May ``actor_role`` remove a member whose role is ``target_role``?"""
    require_manager(actor_role, "remove members")
    if _RANK[target_role] <= _RANK[actor_role]:
        raise WarblerError(ErrorCode.FORBIDDEN, f"an {actor_role} cannot remove an {target_role}")


def heir(members: Mapping[int, str], leaving: int) -> int | None:
    """Who becomes owner when the owner ``leaving`` goes: the oldest admin, else the oldest
    member (``members`` is in join order), else nobody."""
    rest = [(uid, role) for uid, role in members.items() if uid != leaving]
    for uid, role in rest:
        if role == "admin":
            return uid
    return rest[0][0] if rest else None
