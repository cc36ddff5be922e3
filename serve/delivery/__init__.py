"""Delivery of bus events to the sockets of one gateway replica."""

from serve.delivery.connection import Connection, LiveMessage
from serve.delivery.hub import DeliveryHub

__all__ = ["Connection", "DeliveryHub", "LiveMessage"]
