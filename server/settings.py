"""Settings, read from TANDEM_* environment variables (command-line flags override them)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# URL schemes without an async driver, as people write them, and the driver Tandem uses.
_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "postgres": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TANDEM_", frozen=True)

    host: str = "127.0.0.1"
    port: int = 8000
    # Any SQLAlchemy async URL: sqlite+aiosqlite:///path or postgresql+asyncpg://user@host/db;
    # or memory:// to keep documents in memory only.
    database_url: str = "sqlite+aiosqlite:///./data/tandem.db"
    # Unset: a single process. Set (redis://host:6379/0): every process with the same URL and
    # database shares documents, presence and access changes (server/rooms/broker.py).
    redis_url: str | None = None
    # Prefix of every Redis key and channel Tandem uses, so several installations (or test
    # runs) can share one Redis.
    redis_prefix: str = Field(default="tandem", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    # Entries each document's Redis stream keeps (about): what a process that starts hosting
    # the document, or reconnects, can read back.
    redis_stream_length: int = Field(default=10_000, ge=100)
    # Signs access tokens. Unset: no sign-in, every connection is the local user.
    secret: str | None = None
    # How long a token from `tandem token` lasts unless `--ttl` says otherwise; 0: forever.
    token_ttl_seconds: float = Field(default=30 * 24 * 3600, ge=0, allow_inf_nan=False)
    # Failed password sign-ins allowed per account and per client address within a minute;
    # past it, POST /api/auth/login answers 429 until the oldest failure is a minute old.
    # 0: no limit.
    login_attempts_per_minute: int = Field(default=10, ge=0)
    # An external identity provider (server/idp.py): its JWKS URL; RS256/ES256 tokens from it
    # are accepted when their iss and aud are these two (both required with the URL). The
    # user is the claim jwt_user_claim names; a token without it is refused (no fallback).
    jwks_url: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_user_claim: str = "preferred_username"
    # Limits per signed-in user (0: none): open connections at once, and documents and
    # folders created per minute. Past them: WebSocket close 4429, REST 429 with Retry-After.
    max_connections_per_user: int = Field(default=100, ge=0)
    max_creations_per_minute: int = Field(default=60, ge=0)
    log_level: str = "info"
    # TLS: both set, the server speaks https and wss only (a certificate chain and its key,
    # PEM files); neither set, plain http and ws.
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    # The event loop: uvloop when it is installed (auto), or asyncio's own.
    loop: Literal["auto", "asyncio", "uvloop"] = "auto"
    # Server processes answering on the one port (server/workers.py); more than one needs
    # redis_url, through which they share documents.
    workers: int = Field(default=1, ge=1)

    # The largest WebSocket message accepted; larger ones close the connection with 1009.
    # Keep it above the largest legitimate sync step 2 (a whole document).
    max_message_bytes: int = 16 * 1024 * 1024
    # A document whose encoded state would grow past this refuses further client updates
    # (the sender is closed with 1009); 0: no limit.
    max_document_bytes: int = 256 * 1024 * 1024
    # What one connection may send, sustained (bursts of ten seconds' worth pass). 0: no limit.
    max_messages_per_second: float = 200.0
    max_bytes_per_second: float = 8 * 1024 * 1024
    # A connection that keeps sending faster is read from no faster than that (TCP holds it
    # back); one that keeps it up for longer than this many seconds is closed with 1008.
    # Presence (awareness) past the allowance is closed at once. 0: never closed for it.
    max_throttled_seconds: float = 300.0
    # At most one presence (awareness) relay per room per this many ms; the changes in
    # between go out together, each client's newest. 0: relay each change at once.
    presence_interval_ms: float = 50.0
    # Bytes queued for one client before it counts as not reading and is disconnected.
    send_buffer_bytes: int = 32 * 1024 * 1024
    # A WebSocket ping every this many seconds; a client that has not answered one within as
    # long again is closed (1011). 0: no pings.
    ping_interval_seconds: float = 30.0
    # Seconds a room stays loaded after its last client leaves.
    room_grace_seconds: float = 10.0
    # The group-commit window: updates that come in a stream gather this long and are
    # committed in one transaction; an update that comes alone is committed at once. Each
    # row costs SQLite 5-7 µs, and a longer window merges more of a document's updates into
    # one row; a crash loses at most this much of what connected clients then send again.
    commit_delay_ms: float = 250.0
    # How far SQLite syncs a commit. normal: a process crash loses nothing committed, a power
    # cut or OS crash can lose the newest commits; full: an fsync per commit, so those survive
    # too. Ignored on PostgreSQL.
    sqlite_synchronous: Literal["normal", "full"] = "normal"
    # Compaction writes a snapshot once a document has this many update rows or bytes.
    compact_after_updates: int = 500
    compact_after_bytes: int = 4 * 1024 * 1024
    # Memory the updates waiting to be stored may take (while the database is down they
    # queue up); past it new client updates are refused with 1013 and REST edits with 503,
    # and nothing already taken is dropped. 0: no limit.
    max_pending_bytes: int = 64 * 1024 * 1024

    # Uploaded files: content-addressed blobs under this folder, at most this many bytes each.
    blob_dir: str = "./data/blobs"
    max_upload_bytes: int = 512 * 1024 * 1024

    # Seed the Double-11 example workspace at start-up unless it is there already.
    demo: bool = False

    # The sidecar (server/sidecar/): `tandem serve` runs it in the same process unless this
    # is off (then run `tandem sidecar` beside it, or nobody is notified).
    sidecar: bool = True
    # How often the sidecar looks for new changes when nothing wakes it (SQLite from another
    # process; PostgreSQL wakes it with NOTIFY and this is only a fallback).
    sidecar_poll_ms: float = Field(default=200.0, gt=0, allow_inf_nan=False)
    # Reminders before a task is due, in hours, and once more when it is overdue.
    remind_first_hours: float = Field(default=24.0, gt=0, allow_inf_nan=False)
    remind_last_hours: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    # A due date without a time of day means the end of that day in this time zone.
    timezone: str = "UTC"
    # Edits of a document by one person with pauses shorter than this are one burst: its
    # owner and watchers hear of it once.
    edit_burst_seconds: float = Field(default=600.0, ge=0, allow_inf_nan=False)
    # The address links in notifications and e-mails start with (default: http://HOST:PORT).
    public_url: str | None = None
    # E-mail: notifications go out through this SMTP server when set (each user chooses off,
    # one message per event, or an hourly digest).
    smtp_host: str | None = None
    smtp_port: int = 25
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_starttls: bool = False
    smtp_from: str = "tandem@localhost"
    # Outgoing webhooks are retried with exponential backoff up to this many seconds apart,
    # for as long as it takes.
    webhook_backoff_max_seconds: float = Field(default=600.0, gt=0, allow_inf_nan=False)

    @field_validator("database_url")
    @classmethod
    def _with_async_driver(cls, url: str) -> str:
        """`sqlite:///x.db` and libpq-style `postgres://…` URLs get the async driver."""
        scheme, sep, rest = url.partition("://")
        return f"{_DRIVERS[scheme]}{sep}{rest}" if sep and scheme in _DRIVERS else url

    @field_validator("sqlite_synchronous", mode="before")
    @classmethod
    def _lower_case(cls, value: object) -> object:
        """`FULL` as SQLite writes it is accepted as well."""
        return value.lower() if isinstance(value, str) else value

    @property
    def in_memory(self) -> bool:
        """`memory://`: documents are kept in memory only (for benchmarks and trials)."""
        return self.database_url == "memory://"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")
