"""Warbler client layer: the async SDK (`WarblerClient`), `warbler chat`, the web page."""

from client.backoff import Backoff
from client.client import WarblerClient
from client.events import ConnectionEvent, Event

__all__ = ["Backoff", "ConnectionEvent", "Event", "WarblerClient"]
