"""Configuration from ``WALBACKUP_*`` environment variables (SPEC §6).

A TOML file named by ``WALBACKUP_CONFIG_FILE`` may set the same keys (lower
case, without the prefix); the environment wins over the file. Invalid values
fail at start with a message naming the variable.
"""

from __future__ import annotations

import logging
import os
import tomllib
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from tasks.core import urls
from tasks.core.commit import WindowSize
from tasks.core.segments import DEFAULT_SEG_SIZE, validate_seg_size
from tasks.core.setting_names import ENV_PREFIX as ENV_PREFIX  # the demo reads it here
from tasks.core.setting_names import unknown_env, unknown_keys
from tasks.errors import InvalidInput

log = logging.getLogger("walbackup.config")

AMQP_SCHEMES = ("amqp://", "amqps://")
URL_CHECKS: dict[str, Callable[[str], object]] = {
    "redis_url": urls.check_redis_url,
    "broker_url": urls.check_broker_url,
    "s3_endpoint_url": urls.check_endpoint_url,
    "remote_storage": urls.split_storage_url,
}
KICK_HOLD_MIN_MS = 30_000


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "walbackup"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    node_id: int | None = Field(default=None, gt=0)
    workdir: Path | None = None
    data_dir: Path = Field(default_factory=default_data_dir)
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_sentinels: str | None = None
    """``host:port,host:port,...``: reach the Redis master through these
    Sentinels; ``redis_url`` then gives only the password and database."""
    redis_master_name: str | None = None
    """The master's name in the Sentinels' configuration (``sentinel monitor NAME ...``)."""
    redis_sentinel_password: str | None = None
    """The Sentinels' own password (their ``requirepass``), if any."""
    broker_url: str | None = None
    remote_storage: str | None = None
    s3_endpoint_url: str | None = None
    parallel_jobs: int = Field(default=5, ge=1, le=256)
    reorder_horizon: int = Field(default=4, ge=1, le=64)
    """How far uploads may run ahead of backup_lsn, in multiples of
    ``parallel_jobs``: 1 pins a slot behind a slow upload, as the reference's
    FuturesOrdered window; more lets later segments use it meanwhile."""
    max_offloader_lag_bytes: int = Field(default=128 * 1024 * 1024, ge=0)
    wal_seg_size: int = DEFAULT_SEG_SIZE
    heartbeat_timeout: float = Field(default=5.0, gt=0)
    election_interval: float = Field(default=1.0, gt=0)
    election_sweep_interval: float = Field(default=30.0, gt=0)
    """Seconds in which the election rounds' sweep goes over every registered
    timeline; between sweeps a round elects only what changed (SPEC §4)."""
    backup_enabled: bool = True
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    restore_prefetch: int = Field(default=8, ge=0, le=64)
    """Segments ``walbackup fetch`` prefetches into its spool (0: none)."""
    restore_ledger_check: Literal["on", "warn", "off"] = "on"
    """``walbackup fetch`` against the SHA-256 the archive ledger recorded:
    ``warn`` serves a segment that differs, saying so (the ledger is wrong)."""
    restore_empty_timeline: Literal["auto", "stop", "end"] = "auto"
    """``walbackup fetch`` of a timeline nothing is archived of exits 200 (``stop``)
    or 1 (``end``); ``auto``: 1 for a standby only (``fetch.empty_timeline_ends``)."""
    agreement_copies: int = Field(default=2, ge=1, le=16)
    """Copies of a segment, the offloader's included, whose bytes must be equal
    before it is uploaded; fewer live nodes holding it lower the bar to all of them."""
    scrub_interval: float = Field(default=30.0, gt=0)
    """Seconds between two scrub passes (beat's ``scrub_all``): each offloader
    checks its timelines' new archived segments and a slice of the older ones
    against the ledger, and uploads again what went missing or bad."""
    scrub_deep_rate: int = Field(default=8 << 20, ge=0)
    """Bytes per second a node reads back from the archive to re-hash it
    (the rolling deep check); 0 turns the deep check off."""
    partial_upload_timeout: float = Field(default=900.0, ge=0)
    """Seconds a ``.partial`` segment may hold WAL not yet archived before the
    offloader uploads it (``tasks.backup.partial``); 0 turns partial upload off."""
    remove_wal: bool = False
    """Delete complete local segments below the removal horizon (``tasks.core.horizon``)."""
    wal_keep_segments: int = Field(default=1, ge=0)
    """Complete segments below backup_lsn that removal keeps on the node."""
    state_file_interval: float = Field(default=30.0, ge=0)
    """Seconds a timeline's state file lags the cluster's backup_lsn at most
    (``tasks.backup.state_writes``): each write is an fsync, for a lower bound
    that WAL removal and the recovery of a Redis that lost its data read."""
    retain_keep_segments: int = Field(default=1, ge=1)
    """Archived segments right below backup_lsn's that ``walbackup retain``
    never deletes, whatever ``--before`` asks (``tasks.core.retention``)."""
    s3_sse: Literal["AES256", "aws:kms"] | None = None
    """Server-side encryption asked for on every S3 PUT; unset: the bucket's default."""
    s3_sse_kms_key_id: str | None = None
    """The KMS key (id, ARN or alias) for ``s3_sse = aws:kms``; unset: the
    account's ``aws/s3`` key. Not a secret: ``walbackup status`` shows it."""
    s3_upload_check: Literal["auto", "etag"] = "auto"
    """``auto``: trust an S3 server the checksum probe finds verifying (``s3_probe``)."""
    wal_header_check: bool = True
    """Upload a complete segment only if its first page is a valid PostgreSQL
    long page header for it, with the timeline's system identifier
    (``tasks.backup.walheader``); false for payloads that are not WAL."""

    @field_validator("wal_seg_size")
    @classmethod
    def _seg_size(cls, value: int) -> int:
        return validate_seg_size(value)

    @field_validator("s3_sse_kms_key_id")
    @classmethod
    def _kms_key_id(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value and info.data.get("s3_sse") != "aws:kms":
            raise ValueError(f"only valid with {ENV_PREFIX}S3_SSE=aws:kms")
        return value

    @field_validator("redis_url", "broker_url", "s3_endpoint_url", "remote_storage")
    @classmethod
    def _url(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None:
            URL_CHECKS[str(info.field_name)](value)  # InvalidInput is a ValueError too
        return value

    @field_validator("redis_sentinels")
    @classmethod
    def _sentinels(cls, value: str | None) -> str | None:
        if value is not None:
            urls.parse_sentinels(value)
        return value

    @model_validator(mode="after")
    def _derived(self) -> Settings:
        if self.node_id is not None and self.workdir is None:
            raise ValueError("WALBACKUP_WORKDIR is required when WALBACKUP_NODE_ID is set")
        if self.redis_sentinels and not self.redis_url.startswith("redis://"):
            raise ValueError(
                f"{ENV_PREFIX}REDIS_URL: must be a redis:// URL (its password and database) "
                f"with {ENV_PREFIX}REDIS_SENTINELS"
            )
        if not (self.broker_url or self.redis_sentinels) and self.redis_url.startswith("unix://"):
            raise ValueError(
                f"{ENV_PREFIX}BROKER_URL: required when {ENV_PREFIX}REDIS_URL is a unix:// "
                "socket, which Celery cannot use: redis+socket:///PATH/TO/SOCKET[?virtual_host=DB]"
            )
        if bool(self.redis_sentinels) != bool(self.redis_master_name):
            raise ValueError(
                f"{ENV_PREFIX}REDIS_SENTINELS and {ENV_PREFIX}REDIS_MASTER_NAME go together"
            )
        return self

    @property
    def sentinels(self) -> list[tuple[str, int]]:
        """The Sentinels' addresses; empty when Redis is reached directly."""
        return urls.parse_sentinels(self.redis_sentinels) if self.redis_sentinels else []

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_file = os.environ.get(f"{ENV_PREFIX}CONFIG_FILE")
        if toml_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)

    @property
    def effective_broker_url(self) -> str:
        """Through the Sentinels (kombu's ``sentinel://`` URLs, the password in
        the first only, which Celery masks) unless a broker URL is set."""
        if self.broker_url or not self.sentinels:
            return self.broker_url or self.redis_url
        target = urlsplit(self.redis_url)
        userinfo, at, _ = target.netloc.rpartition("@")
        db = target.path or "/0"
        hosts = [(f"[{host}]" if ":" in host else host, port) for host, port in self.sentinels]
        return ";".join(
            f"sentinel://{userinfo + at if i == 0 else ''}{host}:{port}{db}"
            for i, (host, port) in enumerate(hosts)
        )

    @property
    def broker_sentinel_options(self) -> dict[str, Any]:
        """kombu transport options for a broker reached through the Sentinels."""
        if self.broker_url or not self.sentinels:
            return {}
        # A Sentinel that does not answer must not hang a worker either.
        sentinel_kwargs: dict[str, Any] = {"socket_timeout": 5, "socket_connect_timeout": 5}
        if self.redis_sentinel_password:
            sentinel_kwargs["password"] = self.redis_sentinel_password
        return {"master_name": self.redis_master_name, "sentinel_kwargs": sentinel_kwargs}

    @property
    def redis_options(self) -> dict[str, Any]:
        """``RedisState.from_url``'s keyword arguments besides the URL."""
        return {
            "sentinels": self.sentinels,
            "master_name": self.redis_master_name,
            "sentinel_password": self.redis_sentinel_password,
        }

    @property
    def redis_where(self) -> str:
        """Where Redis is, for messages (no password)."""
        if self.sentinels:
            hosts = ",".join(f"{h}:{p}" for h, p in self.sentinels)
            return f"master {self.redis_master_name!r} via Sentinels {hosts}"
        return urls.redact(self.redis_url)

    @property
    def broker_is_redis(self) -> bool:
        """False for RabbitMQ (``amqp://``, ``amqps://``)."""
        return not self.effective_broker_url.startswith(AMQP_SCHEMES)

    @property
    def effective_remote_storage(self) -> str:
        return self.remote_storage or (self.data_dir / "remote").resolve().as_uri()

    # The kick rule: an unforced kick (beat's rounds) goes out only once the timeline's
    # kick key expired; sending one sets it for ``kick_hold_ms`` (``Elector.elect``), the
    # offloader taking it (``Leases.backup_many``) shortens that to ``kick_interval_ms``.
    # Not bound: triggers (forced), a new election's result, ``Leases.hand_over``'s kick.
    @property
    def kick_interval_ms(self) -> int:
        """The least time between two unforced kicks of a timeline, from when its offloader
        took the last one or told of new WAL it takes up itself (``Heartbeats``)."""
        return max(2000, int(2 * self.election_interval * 1000))

    @property
    def kick_hold_ms(self) -> int:
        """How long a kick not taken yet (queued behind others) holds back the
        next: long enough for a backlogged queue; a lost kick is sent again
        after it."""
        return max(KICK_HOLD_MIN_MS, 10 * self.kick_interval_ms)

    @property
    def window(self) -> WindowSize:
        return WindowSize(self.parallel_jobs, self.parallel_jobs * self.reorder_horizon)

    @property
    def lease_ttl_s(self) -> float:
        """A lease outlives a missed renewal or two but not a dead node."""
        return self.heartbeat_timeout


def load_settings(**overrides: Any) -> Settings:
    """The settings; every mistake (a bad value, a missing or malformed
    ``WALBACKUP_CONFIG_FILE`` or a key of it that is no setting) is one clear
    message. A ``WALBACKUP_*`` variable that is no setting is a warning."""
    toml_file = os.environ.get(f"{ENV_PREFIX}CONFIG_FILE")
    if toml_file and not Path(toml_file).is_file():
        raise InvalidInput(f"{ENV_PREFIX}CONFIG_FILE: {toml_file} does not exist or is not a file")
    try:
        settings = Settings(**overrides)
        keys = list(tomllib.loads(Path(toml_file).read_text("utf-8"))) if toml_file else []
    except tomllib.TOMLDecodeError as exc:
        problem = f"{ENV_PREFIX}CONFIG_FILE: {toml_file} is not valid TOML: {exc}"
        raise InvalidInput(problem) from None
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) if err["loc"] else ""
            name = f"{ENV_PREFIX}{field.upper()}" if field else "configuration"
            problems.append(f"{name}: {err['msg'].removeprefix('Value error, ')}")
        raise InvalidInput("invalid configuration: " + "; ".join(problems)) from None
    if unknown := unknown_keys(keys, Settings.model_fields):
        raise InvalidInput(f"{ENV_PREFIX}CONFIG_FILE: {toml_file}: " + "; ".join(unknown))
    for problem in unknown_env(os.environ, Settings.model_fields):
        log.warning("%s: ignored", problem)
    return settings


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
