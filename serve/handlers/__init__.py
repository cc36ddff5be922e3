"""The gateway's handler layer: what routes call; the only code that talks to actors and storage."""

from serve.handlers.accounts import AccountsHandler

__all__ = ["AccountsHandler"]
