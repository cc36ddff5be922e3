"""The one configuration class: built once at an entry point and passed down, never at import."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Literal

from pydantic import Field, PrivateAttr, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from warbler.errors import ErrorCode, WarblerError

_ASYNC_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "postgresql+psycopg": "postgresql+asyncpg",
    "postgresql+psycopg2": "postgresql+asyncpg",
    "mysql": "mysql+aiomysql",
    "mysql+pymysql": "mysql+aiomysql",
    "mariadb": "mysql+aiomysql",
    "mariadb+pymysql": "mysql+aiomysql",
}


class Settings(BaseSettings):
    """Every knob of a Warbler cluster. Environment variables use the prefix ``WARBLER_``."""

    model_config = SettingsConfigDict(env_prefix="WARBLER_", extra="ignore")
    # The generated dev key once resolved_secret_key has read it (not a setting).
    _dev_key: str | None = PrivateAttr(default=None)

    mode: Literal["dev", "production"] = "dev"
    data_dir: Path = Path(".warbler")
    database_url: str | None = None
    redis_url: str | None = None
    secret_key: SecretStr | None = None
    ray_address: str | None = None
    # Prefix of every Redis key and the Ray namespace: two clusters (or test sessions) can share
    # one Redis server and one Ray cluster without seeing each other.
    namespace: str = "warbler"

    # Ingress.
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    use_haproxy: bool = True
    # Two: with one, killing or scaling in the last replica was a full outage (~25 s measured).
    gateway_min_replicas: int = 2
    gateway_max_replicas: int = 4
    gateway_initial_replicas: int = 2
    max_sockets_per_replica: int = 20_000
    target_sockets_per_replica: int = 5_000
    # Sockets are sticky and scaling in moves them: scale out quickly and in slowly.
    gateway_upscale_delay_s: float = 30.0
    gateway_downscale_delay_s: float = 600.0
    # After any change of the replica set (haproxy reloads), sockets that predate it are told to
    # reconnect one by one over this window: the old haproxy process drops whatever is left at
    # its hard stop (ingress.HARD_STOP_AFTER_S, 120 s), all at once. 0 turns it off.
    reload_reconnect_window_s: float = 60.0

    # Actor hosts and the directory.
    num_hosts: int = 2
    min_hosts: int = 1
    max_hosts: int = 8
    num_shards: int = 256
    host_cpus: float = 0.0
    idle_passivate_s: float = 300.0
    max_active_entities: int = 200_000
    # The host-pool autoscaler (actors.autoscale): on, how often it looks, and overrides of its
    # AutoscalePolicy fields (e.g. {"up_sustain_s": 10}); bounds come from min/max_hosts.
    host_autoscale: bool = True
    host_autoscale_interval_s: float = 10.0
    host_autoscale_policy: dict[str, float] = Field(default_factory=dict)
    # Failover (actors.failover): the shards of a pool host Ray is restarting move to the other
    # hosts at once instead of waiting 2-3.5 s for the restart; how often the GCS is asked.
    host_failover: bool = True
    host_failover_poll_s: float = Field(default=0.2, gt=0.0)

    # Durability.
    # 2048: on PostgreSQL, 13.0k appends/s against 4.1k with 512 at the same load (storage_bench).
    writer_max_batch: int = 2048
    writer_max_delay_ms: float = 2.0
    redis_checkpoint_every_events: int = 16
    redis_checkpoint_every_s: float = 1.0
    sql_checkpoint_every_events: int = 512

    # Accounts and limits.
    access_token_ttl_s: int = 900
    refresh_token_ttl_s: int = 30 * 24 * 3600
    max_body_bytes: int = 16 * 1024
    # Per-user caps (abuse limits, issue 11): members of one group, and groups one user owns.
    max_group_members: int = 10_000
    max_groups_per_user: int = 1_000
    max_frame_bytes: int = 64 * 1024
    send_rate_per_s: float = 50.0
    send_burst: int = 200
    history_page_max: int = 500
    # GET /v1/search, per user and replica (a search costs far more than a history page).
    search_rate_per_s: float = 5.0
    search_burst: int = 20
    # The edge (serve.middleware): refused before any parsing, as problem JSON. 64 KiB holds
    # the largest valid body (a 16 KiB message escaped as \uXXXX, a 1,000-member group).
    # URL and header caps sit below HAProxy's own (~15 KiB with Serve's 16 KiB tune.bufsize),
    # whose refusal is an HTML page.
    max_request_bytes: int = 64 * 1024
    max_url_bytes: int = 8 * 1024
    max_header_bytes: int = 12 * 1024
    # Abuse limits (Redis counters, shared by every replica: storage.throttle). Failed logins
    # per account and per client address within the window; registrations per address within
    # theirs. Addresses in throttle_exempt_ips (loopback: the laptop, the load generator) are
    # not limited per address. 0 turns a limit off.
    login_failures_per_account: int = 10
    login_failures_per_ip: int = 100
    login_failure_window_s: float = 300.0
    registrations_per_ip: int = 20
    registration_window_s: float = 3600.0
    throttle_exempt_ips: list[str] = Field(default_factory=lambda: ["127.0.0.1", "::1"])
    # Forwarded client addresses (X-Forwarded-For) are believed only from these peers (a load
    # balancer in front of the cluster); Serve's HAProxy does not add the header.
    trusted_proxies: list[str] = Field(default_factory=list)

    # Batching between gateways and hosts.
    batch_window_ms: float = 1.0
    batch_max: int = 512

    # Observability (warbler.metrics, warbler.logs): metrics off exports nothing (the in-process
    # counters remain, ~0.1 us each); logs as JSON lines or plain text.
    metrics: bool = True
    # Ray exports to its agent every 10 s (metrics_report_interval_ms): pushing more often
    # than every 5 s only costs Ray calls (~12 us each) that no scrape ever sees.
    metrics_flush_s: float = 5.0
    log_format: Literal["json", "text"] = "json"
    log_level: str = "INFO"

    # ChatAI (docs/chatai.md): bot turns per minute per conversation, provider timeout (one
    # retry), a bot turn's deadline (the trigger call waits for the whole answer), the tokens
    # all bots of one owner may spend (0: no limit), who may create bots ("any" or "admins"),
    # and the embedder deployment's replicas and batch.
    bot_turns_per_minute: int = 20
    bot_provider_timeout_s: float = 20.0
    bot_turn_timeout_s: float = 120.0
    bot_owner_token_budget: int = 0
    bot_creators: str = "any"
    bot_admin_usernames: list[str] = Field(default_factory=list)
    chatai_embedder: bool = True
    embedder_replicas: int = 1
    embedder_max_batch: int = 32
    embedder_batch_wait_s: float = 0.005
    extra_ray_env: dict[str, str] = Field(default_factory=dict)

    @property
    def async_database_url(self) -> str:
        """The SQLAlchemy URL with an asyncio driver, whatever driver the user named."""
        url = self.database_url or f"sqlite:///{(self.data_dir / 'warbler.db').resolve()}"
        scheme, sep, rest = url.partition("://")
        if not sep:
            raise WarblerError(ErrorCode.CONFIG, f"database URL has no scheme: {url!r}")
        return f"{_ASYNC_DRIVERS.get(scheme, scheme)}://{rest}"

    def resolved_secret_key(self) -> str:
        """The signing key: given, or generated once and kept under the data dir (dev only)."""
        if self.secret_key is not None:
            return self.secret_key.get_secret_value()
        if self.mode == "production":
            raise WarblerError(
                ErrorCode.CONFIG, "WARBLER_SECRET_KEY must be set in production mode"
            )
        if self._dev_key is not None:  # read once: bot answers open sealed keys with it
            return self._dev_key
        path = self.data_dir / "secret_key"
        if path.exists():
            key = path.read_text().strip()
        else:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            key = secrets.token_urlsafe(48)
            path.write_text(key)
            path.chmod(0o600)
        self._dev_key = key
        return key

    def check_production(self) -> None:
        """Refuse insecure defaults when ``mode`` is production."""
        if self.mode != "production":
            return
        problems = []
        if self.secret_key is None:
            problems.append("WARBLER_SECRET_KEY is unset")
        if self.database_url is None or self.database_url.startswith("sqlite"):
            problems.append("WARBLER_DATABASE_URL must name PostgreSQL or MySQL")
        if self.redis_url is None:
            problems.append("WARBLER_REDIS_URL must name a Redis server")
        if problems:
            raise WarblerError(ErrorCode.CONFIG, "; ".join(problems))
