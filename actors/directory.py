"""The directory: entity key -> virtual shard -> host, through a versioned shard map.

Pure data and arithmetic (no Redis, no Ray): ``directory_store`` persists a ``ShardMap`` and
``cluster`` drives changes. An entity's shard never changes (a stable hash of its key modulo the
map's fixed ``num_shards``); which host serves a shard changes with the map's ``epoch``. Pins
route single entities to a dedicated host and take precedence over the shard.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from warbler.errors import ErrorCode, WarblerError


def shard_of(key: str, num_shards: int) -> int:
    """The fixed virtual shard of ``key`` (crc32: stable across processes, unlike ``hash``)."""
    return zlib.crc32(key.encode()) % num_shards


@dataclass(frozen=True)
class ShardMap:
    """One version of the directory. ``shards[i]`` names the pool host serving shard ``i``;
    ``pins`` maps an entity key to its dedicated host."""

    epoch: int
    hosts: tuple[str, ...]
    shards: tuple[str, ...]
    pins: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if not self.shards:
            raise WarblerError(ErrorCode.CONFIG, "a shard map needs at least one shard")
        unknown = set(self.shards) - set(self.hosts)
        if unknown:
            raise WarblerError(ErrorCode.CONFIG, f"shards assigned to unknown hosts {unknown}")
        if set(self.pins.values()) & set(self.hosts):
            raise WarblerError(ErrorCode.CONFIG, "a dedicated host cannot also be a pool host")

    @property
    def num_shards(self) -> int:
        """How many virtual shards keys hash into (fixed for the life of a cluster)."""
        return len(self.shards)

    def owner(self, key: str) -> str:
        """The host that serves entity ``key`` under this map."""
        pinned = self.pins.get(key)
        if pinned is not None:
            return pinned
        return self.shards[zlib.crc32(key.encode()) % len(self.shards)]

    def all_hosts(self) -> list[str]:
        """Pool hosts then dedicated hosts, each once."""
        return [*self.hosts, *dict.fromkeys(self.pins.values())]

    def shards_of(self, host: str) -> list[int]:
        """The shards ``host`` serves."""
        return [i for i, h in enumerate(self.shards) if h == host]

    def to_json(self) -> bytes:
        """Compact JSON, the form kept in Redis."""
        return json.dumps(
            {
                "epoch": self.epoch,
                "hosts": list(self.hosts),
                "shards": [self.hosts.index(h) for h in self.shards],
                "pins": dict(self.pins),
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> ShardMap:
        """Parse what ``to_json`` wrote."""
        raw = json.loads(data)
        hosts = tuple(raw["hosts"])
        return cls(
            epoch=int(raw["epoch"]),
            hosts=hosts,
            shards=tuple(hosts[i] for i in raw["shards"]),
            pins=MappingProxyType(dict(raw.get("pins", {}))),
        )


def initial_map(hosts: list[str], num_shards: int) -> ShardMap:
    """Epoch 1: shards dealt round-robin over ``hosts``."""
    if not hosts:
        raise WarblerError(ErrorCode.CONFIG, "a cluster needs at least one host")
    if num_shards < 1:
        raise WarblerError(ErrorCode.CONFIG, "num_shards must be at least 1")
    return ShardMap(
        epoch=1,
        hosts=tuple(hosts),
        shards=tuple(hosts[i % len(hosts)] for i in range(num_shards)),
    )


def with_host_added(current: ShardMap, host: str) -> ShardMap:
    """The next map with ``host`` in the pool, taking an even share of shards from the most
    loaded hosts (the fewest shards move)."""
    if host in current.all_hosts():
        raise WarblerError(ErrorCode.CONFLICT, f"host {host!r} is already in the map")
    hosts = (*current.hosts, host)
    owned: dict[str, list[int]] = {h: current.shards_of(h) for h in current.hosts}
    owned[host] = []
    shards = list(current.shards)
    target = current.num_shards // len(hosts)
    while len(owned[host]) < target:
        donor = max(current.hosts, key=lambda h: len(owned[h]))
        shard = owned[donor].pop()
        owned[host].append(shard)
        shards[shard] = host
    return ShardMap(current.epoch + 1, hosts, tuple(shards), current.pins)


def with_host_removed(current: ShardMap, host: str) -> ShardMap:
    """The next map without pool ``host``: its shards go to the least loaded hosts."""
    if host not in current.hosts:
        raise WarblerError(ErrorCode.NOT_FOUND, f"host {host!r} is not a pool host")
    hosts = tuple(h for h in current.hosts if h != host)
    if not hosts:
        raise WarblerError(ErrorCode.CONFLICT, "cannot remove the last pool host")
    counts = {h: len(current.shards_of(h)) for h in hosts}
    shards = list(current.shards)
    for shard in current.shards_of(host):
        heir = min(hosts, key=lambda h: counts[h])
        counts[heir] += 1
        shards[shard] = heir
    return ShardMap(current.epoch + 1, hosts, tuple(shards), current.pins)


def with_pin(current: ShardMap, key: str, host: str) -> ShardMap:
    """The next map with entity ``key`` served by dedicated ``host``."""
    if host in current.hosts:
        raise WarblerError(ErrorCode.CONFLICT, f"{host!r} is a pool host, not a dedicated one")
    pins = {**current.pins, key: host}
    return ShardMap(current.epoch + 1, current.hosts, current.shards, MappingProxyType(pins))


def without_pin(current: ShardMap, key: str) -> ShardMap:
    """The next map with entity ``key`` back on its shard's pool host."""
    if key not in current.pins:
        raise WarblerError(ErrorCode.NOT_FOUND, f"{key!r} is not pinned")
    pins = {k: h for k, h in current.pins.items() if k != key}
    return ShardMap(current.epoch + 1, current.hosts, current.shards, MappingProxyType(pins))


class Ownership:
    """What one host may serve: keys that every map it holds assigns to it.

    During a move the host holds the committed map and the pending one, so a shard it is
    giving away stops being served the moment the host learns of the move, and a shard it is
    receiving is served only once the pending map is committed.
    """

    __slots__ = ("host", "maps")

    def __init__(self, host: str, maps: list[ShardMap]) -> None:
        self.host = host
        self.maps = maps

    @property
    def epoch(self) -> int:
        """The newest epoch this host knows of (a pending one during a move)."""
        return max((m.epoch for m in self.maps), default=0)

    @property
    def committed_epoch(self) -> int:
        """The epoch of the committed map (callers only ever route by committed maps)."""
        return self.maps[0].epoch if self.maps else 0

    def owns(self, key: str) -> bool:
        """True when this host may activate and serve ``key``."""
        maps = self.maps
        if len(maps) == 1:  # no move under way: the common case, checked for every envelope
            return maps[0].owner(key) == self.host
        if not maps:
            return False
        host = self.host
        return all(m.owner(key) == host for m in maps)
