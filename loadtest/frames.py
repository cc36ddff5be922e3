"""What the load generator puts in a message: a run-scoped client_msg_id and a time-stamped body.

The send time travels in the text body (``"<time.time_ns()> xxxx..."``), so the device that
receives a message computes its latency by itself, in whatever process it runs: every generator
process on the machine reads the same wall clock. The client_msg_id starts with the run id, so
traffic from an earlier run (or a human in the web chat) is told apart from this run's.
"""

from __future__ import annotations

from warbler.protocol import SendFrame, dump_frame

# The smallest body that still holds a 19-digit nanosecond stamp and a separator.
MIN_BODY_BYTES = 20


def stamp_body(sent_ns: int, size: int) -> str:
    """A text body of ``size`` bytes (at least MIN_BODY_BYTES) carrying ``sent_ns``."""
    head = f"{sent_ns} "
    return head + "x" * max(0, size - len(head))


def read_stamp(body: object) -> int | None:
    """The send time in a body made by `stamp_body`, or None for any other body."""
    if not isinstance(body, str):
        return None
    head, _, _ = body.partition(" ")
    return int(head) if head.isdigit() else None


def message_id(run_id: str, sender: int, n: int) -> str:
    """The client_msg_id of the n-th message of one sender in one run."""
    return f"{run_id}.{sender}.{n}"


def is_ours(client_msg_id: str, run_id: str) -> bool:
    """True for a client_msg_id made by `message_id` with this run id."""
    return client_msg_id.startswith(run_id + ".")


def send_frame(
    request_id: int,
    client_msg_id: str,
    body: str,
    *,
    conversation_id: int | None = None,
    to_user_id: int | None = None,
) -> str:
    """The JSON text of a `send` frame (validated by the protocol's own model)."""
    frame = SendFrame(
        id=request_id,
        conversation_id=conversation_id,
        to_user_id=to_user_id,
        client_msg_id=client_msg_id,
        kind="text",
        body=body,
    )
    return dump_frame(frame)
