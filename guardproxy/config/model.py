"""The configuration's shape: frozen dataclasses whose field defaults are the only defaults.

Each dataclass is one TOML table: `Config.server` is `[server]` (ServerLimits: what one
request and the listener may take), `Config.limits` is `[limits]` (TrafficLimits: rates,
concurrency and the queue for generations).  Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import ClassVar

DEFAULT_LISTEN = "0.0.0.0:11435"
DEFAULT_UPSTREAM = "http://127.0.0.1:11434"
DEFAULT_ACCESS_LOG = "-"  # stdout
ENV_KEY = "GUARDPROXY_API_KEY"
ENV_CONFIG = "GUARDPROXY_CONFIG"
DEFAULT_CONFIG_NAME = "guardproxy.toml"
KEY_PREFIX = "gp_"
MIN_KEY_LENGTH = 16   # for keys a person picks (key = "...", $GUARDPROXY_API_KEY); generated ones are 46
MAX_KEY_LENGTH = 512  # longer X-API-Key / Bearer values are refused unread


class ConfigError(Exception):
    """A config mistake, already phrased as the one line a user should see."""


class CommandError(ConfigError):
    """A command that cannot do what it was asked though the config is fine (rotating a revoked key, a name
    already taken, a bad option value): one line, said without "config error" (cli.py)."""


@dataclass(frozen=True)
class Rate:
    """A request rate such as "30/min": `count` requests per `per` seconds."""
    count: int
    per: float


@dataclass(frozen=True)
class Budget:
    """A token budget such as "200000/day": prompt plus completion tokens over a sliding window."""
    tokens: int
    window: float     # seconds: an hour, a day, or a month of 30 days
    unit: str         # "h", "day" or "month", as written (names the window in shared state)

    def __str__(self) -> str:
        return f"{self.tokens}/{self.unit}"


@dataclass(frozen=True)
class KeyEntry:
    name: str      # shown in the access log, metrics and `keys list`; unique
    sha256: bytes  # SHA-256 of the key's UTF-8 bytes (64 hex digits); the key itself is not kept
    plaintext: bool = False  # written as key = "..." in the file
    admin: bool = False                   # may reach /api/pull, /api/delete, ...
    models: tuple[str, ...] | None = None  # glob patterns of the models it may use; absent: every model
    rate: Rate | None = None              # requests of this key, e.g. "30/min"
    max_concurrent: int | None = None     # generations of this key in flight at once
    expires: date | None = None           # valid through this day (UTC)
    cloud: bool = False                   # may use cloud models (model:cloud, model:tag-cloud)
    max_keep_alive: float | None = None   # longest keep_alive a body may ask for (no forever, no unload)
    revoked: date | None = None           # refused from the moment this is set; the date is a record
    previous_sha256: bytes | None = None  # the key before a rotation, still valid ...
    previous_valid_until: datetime | None = None  # ... until this moment (UTC, written by `keys rotate --grace`)
    metrics: bool = False                 # may read GET /metrics (admin keys may too)
    tokens: Budget | None = None          # token budget over a sliding window
    weight: float = 1.0                   # grants per turn while keys wait for a slot (fair queue), >= 1
    max_num_ctx: int | None = None        # an options.num_ctx above this is lowered to it (the body re-encoded)
    max_output_tokens: int | None = None  # each dialect's output cap lowered to this, and set to it where unlimited


def key_text_problem(key: str) -> str | None:
    """Why a key a person wrote can never work as one, or None.

    One rule for every place a plaintext key comes from.  A client cannot send
    surrounding spaces or control characters in a header value, so such a key
    could never be presented; the length bounds match what the gate reads.
    """
    if len(key) < MIN_KEY_LENGTH:
        return f"a key of at least {MIN_KEY_LENGTH} characters (this one has {len(key)})"
    if len(key) > MAX_KEY_LENGTH:
        return f"a key of at most {MAX_KEY_LENGTH} characters (this one has {len(key)})"
    if key != key.strip() or any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
        return "a key without surrounding spaces or control characters (a stray line ending?)"
    return None


@dataclass(frozen=True)
class Cors:
    origins: tuple[str, ...] = ()  # browser origins allowed, exactly as sent ("https://app.example"), or "*"
    max_age: int = 86400           # seconds a browser may cache a preflight answer


@dataclass(frozen=True)
class TrafficLimits:
    per_ip: Rate | None = None             # requests per client address (an IPv6 client by its /64)
    max_concurrent: int | None = None  # generations in flight, all keys together
    queue_timeout: float = 30.0            # a generation waits this long for a free slot, then 503
    trusted_proxies: tuple[str, ...] = ()  # CIDRs of proxies whose client-address header is believed
    max_queue: int = 1024                  # waiting requests, all keys together
    max_tracked: int = 65536               # addresses/keys kept in the rate and ban tables
    # The one header a trusted proxy's client address is read from (nginx's real_ip_header).
    client_address_header: str = "x-forwarded-for"


@dataclass(frozen=True)
class Ban:
    after_failures: int = 0  # failed authentications from one address ... (0: bans are off)
    window: float = 600.0      # ... within this window ...
    duration: float = 900.0    # ... ban the address this long: 429 before any key is looked at
    # A [ban] table turns bans on: without after_failures, it means this many.
    ENABLED_AFTER_FAILURES: ClassVar[int] = 20


@dataclass(frozen=True)
class Timeouts:
    connect: float = 10.0      # opening a connection to the upstream
    read: float = 600.0        # between upstream bytes (a generation can think for minutes)
    header: float = 10.0       # a client's request head, from its first byte
    keepalive: float = 30.0    # an idle client connection between requests
    grace: float = 30.0        # running streams at shutdown
    body: float = 30.0         # silence inside a request body (then 408)
    body_total: float = 60.0   # a whole request body, blob uploads aside (then 408)
    write: float = 60.0        # a client that stops reading a response (then dropped)
    first_byte: float = 300.0  # the upstream's response head (a cold model load is slow)
    upstream_idle: float = 60.0  # a pooled upstream connection unused this long is closed


@dataclass(frozen=True)
class ServerLimits:
    max_body: int = 64 * 1024 * 1024     # request body bytes (then 413)
    max_blob: int = 200 * 1024 ** 3      # a model blob upload by an admin key (then 413)
    zero_copy: bool = True               # long Content-Length bodies spliced in the kernel (Linux, plain TCP)
    max_connections: int = 10000         # open client connections in all (then 503)
    max_connections_per_ip: int = 256    # open client connections from one address (then 503)
    max_headers: int = 100               # header fields in a request head (then 431)


@dataclass(frozen=True)
class Tls:
    cert: Path   # PEM certificate chain (fullchain.pem); a relative path is next to the config file
    key: Path    # PEM private key; a relative path is next to the config file


def url_host(host: str) -> str:
    """A host as a URL or a Host header writes it: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host


@dataclass(frozen=True)
class Upstream:
    host: str
    port: int

    @property
    def authority(self) -> str:
        return f"{url_host(self.host)}:{self.port}"


LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class MetricsSettings:
    """[metrics]: where Prometheus reads them besides GET /metrics on the main listener (with a key)."""
    listen: tuple[str, int] | None = None  # "host:port" of a separate listener that needs no key (keep it on loopback)


@dataclass(frozen=True)
class UpstreamHost:
    """One Ollama host of `[[upstreams]]` (or the single `upstream`)."""
    name: str                               # shown in logs, metrics and /api/ps
    address: Upstream                       # the host's URL, like "http://10.0.0.5:11434"
    max_concurrent: int | None = None       # generations in flight on it (required in [[upstreams]])
    weight: float = 1.0                     # its share of least-busy
    models: tuple[str, ...] | None = None   # glob patterns of the models sent to it; absent: what its /api/tags lists


@dataclass(frozen=True)
class Routing:
    health_interval: float = 5.0  # GET / and /api/ps per host; 0 turns the checks off
    max_attempts: int = 2         # hosts one request may try before its first byte


@dataclass(frozen=True)
class Budgets:
    """[budgets]: how a generation is charged against its key's token budget (`tokens`)."""
    reserve: int = 1024   # output tokens reserved at admission when neither the body nor the key sets a cap


ON_REDIS_ERROR = ("local", "open", "closed")


@dataclass(frozen=True)
class Cluster:
    """[cluster]: several gates share their limits through one Redis."""
    redis: str = ""                   # redis:// or rediss:// URL; $GUARDPROXY_REDIS_URL replaces it
    key_prefix: str = "guardproxy:"   # every Redis key this gate writes starts with this
    lease_ttl: float = 15.0           # a slot of an instance that died is free again after this
    op_timeout: float = 0.05          # a Redis call on the request path waits at most this
    on_redis_error: str = "local"     # "local": per instance, limits divided; "open": none; "closed": 503
    sentinels: tuple[str, ...] = ()  # "host:port" of Redis Sentinels; the primary is asked of them at each connect
    sentinel_master: str = ""         # the name the Sentinels monitor the primary by (with `sentinels`)
    tls_ca: str = ""                  # rediss://: PEM file of the CA(s) to trust instead of the system's
    tls_cert: str = ""                # rediss://: PEM client certificate (with tls_key), for servers that ask
    tls_key: str = ""                 # rediss://: PEM private key of tls_cert
    tls_server_name: str = ""         # rediss://: the name the server's certificate must carry (default: its host)


@dataclass(frozen=True)
class Config:
    path: Path | None
    listen_host: str    # listen: the address and port to accept clients on, "[::]:11435" for IPv6
    listen_port: int
    upstream: Upstream  # the Ollama to forward to (or [[upstreams]] for several)
    keys: tuple[KeyEntry, ...]
    access_log: str = DEFAULT_ACCESS_LOG  # JSON access-log lines: a file path (relative: next to the config file), "-" for stdout, "" for none
    timeouts: Timeouts = field(default_factory=Timeouts)
    server: ServerLimits = field(default_factory=ServerLimits)
    tls: Tls | None = None
    cors: Cors = field(default_factory=Cors)
    limits: TrafficLimits = field(default_factory=TrafficLimits)
    ban: Ban = field(default_factory=Ban)
    log_level: str = "info"  # messages on stderr from this level up: debug, info, warning, error
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    upstreams: tuple[UpstreamHost, ...] = ()  # [[upstreams]]; empty: the single `upstream`
    routing: Routing = field(default_factory=Routing)
    cluster: Cluster | None = None
    budgets: Budgets = field(default_factory=Budgets)
    # [aliases] table: a model name clients ask for = the model it runs ("gpt-4o-mini" = "llama3.2:3b"); the
    # body's model is rewritten before every check, keys' `models` and the cloud scope judge the target
    aliases: tuple[tuple[str, str], ...] = ()

    def hosts(self) -> tuple[UpstreamHost, ...]:
        """Every host requests may go to: the [[upstreams]], or `upstream` named by its address."""
        return self.upstreams or (UpstreamHost(self.upstream.authority, self.upstream),)
