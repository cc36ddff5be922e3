"""Warbler actors layer: virtual actors (entities) hosted on a pool of Ray host actors.

The gateway uses ``Runtime`` (calls, batched) and ``actors.cluster`` (hosts and placement);
messages and results are the dataclasses of ``actors.messages``.
"""

from actors.cluster import (
    add_host,
    pin_entity,
    remove_host,
    shutdown_hosts,
    start_hosts,
    unpin_entity,
)
from actors.messages import (
    AddMembers,
    Append,
    ConnectDevice,
    ConversationInfo,
    CreateGroup,
    DeviceInfo,
    DisconnectDevice,
    GetInfo,
    GetSession,
    Leave,
    MarkRead,
    MemberInfo,
    MessageEvent,
    OpenDirect,
    ReadLog,
    Receipt,
    RemoveMember,
    Rename,
    Request,
    SessionInfo,
    SetRole,
)
from actors.names import NEW_CONVERSATION_KEY, conv_key, user_key
from actors.runtime import Runtime

__all__ = [
    "NEW_CONVERSATION_KEY",
    "AddMembers",
    "Append",
    "ConnectDevice",
    "ConversationInfo",
    "CreateGroup",
    "DeviceInfo",
    "DisconnectDevice",
    "GetInfo",
    "GetSession",
    "Leave",
    "MarkRead",
    "MemberInfo",
    "MessageEvent",
    "OpenDirect",
    "ReadLog",
    "Receipt",
    "RemoveMember",
    "Rename",
    "Request",
    "Runtime",
    "SessionInfo",
    "SetRole",
    "add_host",
    "conv_key",
    "pin_entity",
    "remove_host",
    "shutdown_hosts",
    "start_hosts",
    "unpin_entity",
    "user_key",
]
