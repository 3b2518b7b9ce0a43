"""The configuration: read with tomllib, validated into frozen dataclasses.

Every mistake raises one ConfigError whose text names the file, the line
when it can be found, the field, and what was expected, so start-up can stop
with a single line instead of a traceback.  Pure logic: no asyncio.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import secrets
import tempfile
import tomllib
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any, Mapping

import tomli_w

DEFAULT_LISTEN = "0.0.0.0:11435"
DEFAULT_UPSTREAM = "http://127.0.0.1:11434"
ENV_KEY = "GUARDPROXY_API_KEY"
ENV_CONFIG = "GUARDPROXY_CONFIG"
DEFAULT_CONFIG_NAME = "guardproxy.toml"
KEY_PREFIX = "gp_"


class ConfigError(Exception):
    """A config mistake, already phrased as the one line a user should see."""


@dataclass(frozen=True)
class Rate:
    """A request rate such as "30/min": `count` requests per `per` seconds."""
    count: int
    per: float


@dataclass(frozen=True)
class KeyEntry:
    name: str
    sha256: bytes  # digest of the key's UTF-8 bytes; the key itself is not kept
    plaintext: bool = False  # written as key = "..." in the file
    admin: bool = False                   # may reach /api/pull, /api/delete, ...
    models: tuple[str, ...] | None = None  # glob patterns; None: every model
    rate: Rate | None = None
    max_concurrent: int | None = None
    expires: date | None = None           # valid through this day (UTC)


@dataclass(frozen=True)
class Cors:
    origins: tuple[str, ...] = ()  # exact origins, or "*"
    max_age: int = 86400


@dataclass(frozen=True)
class Limits:
    per_ip: Rate | None = None
    max_concurrent: int | None = None  # generations in flight, all keys together
    queue_timeout: float = 30.0
    trusted_proxies: tuple[str, ...] = ()  # CIDRs, validated
    max_queue: int = 1024                  # waiting requests, all keys together
    max_tracked: int = 65536               # addresses/keys kept in the rate and ban tables


@dataclass(frozen=True)
class Ban:
    after_failures: int = 0  # 0: bans are off
    window: float = 600.0
    duration: float = 900.0


@dataclass(frozen=True)
class Timeouts:
    connect: float = 10.0      # opening a connection to the upstream
    read: float = 600.0        # between upstream bytes (a generation can think for minutes)
    header: float = 10.0       # a client's request head, from its first byte
    keepalive: float = 30.0    # an idle client connection between requests
    grace: float = 30.0        # running streams at shutdown
    body: float = 30.0         # silence inside a request body (then 408)
    write: float = 60.0        # a client that stops reading a response (then dropped)
    first_byte: float = 300.0  # the upstream's response head (a cold model load is slow)


@dataclass(frozen=True)
class ServerLimits:
    max_body: int = 64 * 1024 * 1024     # request body bytes (then 413)
    max_connections: int = 10000         # open client connections in all (then 503)
    max_connections_per_ip: int = 256    # open client connections from one address (then 503)
    max_headers: int = 100               # header fields in a request head (then 431)


@dataclass(frozen=True)
class Tls:
    cert: Path   # PEM certificate chain (fullchain.pem)
    key: Path    # PEM private key


@dataclass(frozen=True)
class Upstream:
    host: str
    port: int

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class Config:
    path: Path | None
    listen_host: str
    listen_port: int
    upstream: Upstream
    keys: tuple[KeyEntry, ...]
    access_log: str = "-"
    timeouts: Timeouts = field(default_factory=Timeouts)
    server: ServerLimits = field(default_factory=ServerLimits)
    tls: Tls | None = None
    cors: Cors = field(default_factory=Cors)
    limits: Limits = field(default_factory=Limits)
    ban: Ban = field(default_factory=Ban)


# --- keys -----------------------------------------------------------------

def generate_key() -> str:
    """A new API key: 256 random bits, URL-safe, recognisable by its prefix."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


# --- small value parsers ------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|sec|m|min|h|d)?\s*$")
_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any) -> float:
    """Seconds from 30, 2.5, "30s", "10min", "1h", "250ms"."""
    if isinstance(value, bool):
        raise ValueError("a duration like \"30s\", \"10min\" or a number of seconds")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("a duration that is not negative")
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _UNITS[m.group(2)]
    raise ValueError("a duration like \"30s\", \"10min\" or a number of seconds")


_SIZE = re.compile(r"^\s*(\d+)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$")
_SIZE_UNITS = {None: 1, "B": 1, "KB": 1000, "KiB": 1024, "MB": 1000**2, "MiB": 1024**2,
               "GB": 1000**3, "GiB": 1024**3}


def parse_size(value: Any) -> int:
    """Bytes from 1048576, "64MiB", "512KiB", "1GB"."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m:
            return int(m.group(1)) * _SIZE_UNITS[m.group(2)]
    raise ValueError("a size like \"64MiB\", \"512KiB\" or a number of bytes")


_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*(s|sec|second|m|min|minute|h|hour|d|day)\s*$")
_RATE_UNITS = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0,
               "h": 3600.0, "hour": 3600.0, "d": 86400.0, "day": 86400.0}


def parse_rate(value: Any) -> Rate:
    """"30/min", "5/s", "1000/h" (also "10/5min") -> Rate."""
    m = _RATE.match(value) if isinstance(value, str) else None
    if not m or int(m.group(1)) < 1:
        raise ValueError("a rate like \"30/min\", \"5/s\" or \"1000/h\"")
    return Rate(int(m.group(1)), int(m.group(2) or 1) * _RATE_UNITS[m.group(3)])


def parse_hostport(value: str) -> tuple[str, int]:
    """"HOST:PORT" or "[v6]:PORT" -> (host, port)."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\[\]\s]+):(\d+)", value.strip())
    if not m:
        raise ValueError("HOST:PORT, e.g. \"0.0.0.0:11435\" or \"[::]:11435\"")
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4))
    if not 0 <= port <= 65535:
        raise ValueError("a port between 0 and 65535")
    if m.group(1):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError("a valid IPv6 address inside [ ]") from None
    return host, port


def parse_upstream(value: str) -> Upstream:
    m = re.fullmatch(r"http://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-_]+)(?::(\d+))?/?", value.strip())
    if not m:
        raise ValueError("an http:// URL with host and optional port, e.g. \"http://127.0.0.1:11434\"")
    host = m.group(1).strip("[]")
    port = int(m.group(2)) if m.group(2) else 80
    if not 0 < port <= 65535:
        raise ValueError("a port between 1 and 65535")
    return Upstream(host, port)


# --- loading ------------------------------------------------------------------

_TOP = {"listen", "upstream", "keys", "log", "timeouts", "server", "tls", "cors", "limits", "ban"}
_KEY_FIELDS = {"name", "key_sha256", "key", "admin", "models", "rate", "max_concurrent", "expires"}
_CORS_FIELDS = {"origins", "max_age"}
_LIMIT_FIELDS = {"per_ip", "max_concurrent", "queue_timeout", "trusted_proxies", "max_queue", "max_tracked"}
_BAN_FIELDS = {"after_failures", "window", "duration"}
_LOG_FIELDS = {"access"}
_TIMEOUT_FIELDS = {f for f in Timeouts.__dataclass_fields__}
_SERVER_FIELDS = {f for f in ServerLimits.__dataclass_fields__}
_TLS_FIELDS = {"cert", "key"}


class _Reader:
    """Validation helpers that know the file, so every error names it."""

    def __init__(self, path: Path | None, text: str) -> None:
        self.path = path
        self.lines = text.splitlines()

    def fail(self, where: tuple[Any, ...], expected: str) -> ConfigError:
        name = str(self.path) if self.path else "<config>"
        line = self._locate(where)
        loc = f"{name}:{line}" if line else name
        return ConfigError(f"{loc}: {_dotted(where)}: expected {expected}")

    def _locate(self, where: tuple[Any, ...]) -> int | None:
        """Best-effort line number of a field, so a user can jump to it."""
        table: tuple[Any, ...] = ()
        counts: dict[str, int] = {}
        target_table = tuple(where[:-1])
        leaf = where[-1] if where else None
        table_line = None
        for i, raw in enumerate(self.lines, 1):
            s = raw.strip()
            if s.startswith("[["):
                nm = s.strip("[]").strip()
                counts[nm] = counts.get(nm, -1) + 1
                table = (nm, counts[nm])
            elif s.startswith("["):
                table = (s.strip("[]").strip(),)
            else:
                m = re.match(r'^"?([A-Za-z0-9_\-]+)"?\s*=', s)
                if m and table == target_table and m.group(1) == leaf:
                    return i
                continue
            if table == tuple(where):
                table_line = i
        return table_line

    def table(self, obj: Any, where: tuple[Any, ...], allowed: set[str]) -> Mapping[str, Any]:
        if not isinstance(obj, dict):
            raise self.fail(where, "a table")
        for k in obj:
            if k not in allowed:
                raise self.fail(where + (k,), f"one of the known fields ({', '.join(sorted(allowed))}); "
                                               f"unknown field")
        return obj

    def string(self, obj: Mapping[str, Any], key: str, where: tuple[Any, ...], default: str | None = None) -> str:
        v = obj.get(key, default)
        if not isinstance(v, str):
            raise self.fail(where + (key,), "a string")
        return v

    def integer(self, obj: Mapping[str, Any], key: str, where: tuple[Any, ...], default: int | None,
                minimum: int = 0) -> int | None:
        v = obj.get(key, default)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise self.fail(where + (key,), f"a whole number >= {minimum}")
        return v

    def duration(self, obj: Mapping[str, Any], key: str, where: tuple[Any, ...], default: float) -> float:
        try:
            return parse_duration(obj.get(key, default))
        except ValueError as e:
            raise self.fail(where + (key,), str(e)) from None

    def rate(self, obj: Mapping[str, Any], key: str, where: tuple[Any, ...]) -> Rate | None:
        if key not in obj:
            return None
        try:
            return parse_rate(obj[key])
        except ValueError as e:
            raise self.fail(where + (key,), str(e)) from None

    def strings(self, obj: Mapping[str, Any], key: str, where: tuple[Any, ...]) -> tuple[str, ...] | None:
        if key not in obj:
            return None
        v = obj[key]
        if not isinstance(v, list) or not all(isinstance(x, str) and x.strip() for x in v):
            raise self.fail(where + (key,), "an array of non-empty strings, e.g. [\"a\", \"b\"]")
        return tuple(x.strip() for x in v)


def _dotted(where: tuple[Any, ...]) -> str:
    out = ""
    for part in where:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(file)"


def parse_config(data: Mapping[str, Any], path: Path | None, text: str = "", *,
                 env_key: str | None = None) -> Config:
    r = _Reader(path, text)
    r.table(data, (), _TOP)
    listen = r.string(data, "listen", (), DEFAULT_LISTEN)
    try:
        lhost, lport = parse_hostport(listen)
    except ValueError as e:
        raise r.fail(("listen",), str(e)) from None
    up = r.string(data, "upstream", (), DEFAULT_UPSTREAM)
    try:
        upstream = parse_upstream(up)
    except ValueError as e:
        raise r.fail(("upstream",), str(e)) from None

    keys: list[KeyEntry] = []
    raw_keys = data.get("keys", [])
    if not isinstance(raw_keys, list):
        raise r.fail(("keys",), "an array of tables written as [[keys]]")
    names: set[str] = set()
    for i, k in enumerate(raw_keys):
        where = ("keys", i)
        r.table(k, where, _KEY_FIELDS)
        name = r.string(k, "name", where)
        if not name.strip():
            raise r.fail(where + ("name",), "a non-empty name")
        if name in names:
            raise r.fail(where + ("name",), f"a unique name; \"{name}\" is used twice")
        names.add(name)
        if ("key" in k) == ("key_sha256" in k):
            raise r.fail(where, "exactly one of key_sha256 = \"<64 hex>\" or key = \"<plaintext>\"")
        if "key_sha256" in k:
            h = r.string(k, "key_sha256", where)
            if not re.fullmatch(r"[0-9a-fA-F]{64}", h):
                raise r.fail(where + ("key_sha256",), "64 hexadecimal characters (a SHA-256)")
            digest, plaintext = bytes.fromhex(h), False
        else:
            plain = r.string(k, "key", where)
            if len(plain) < 16:
                raise r.fail(where + ("key",), "a key of at least 16 characters")
            digest, plaintext = hashlib.sha256(plain.encode()).digest(), True
        keys.append(KeyEntry(name, digest, plaintext, **_key_scopes(r, k, where)))
    if env_key:
        keys.append(KeyEntry("env", hashlib.sha256(env_key.encode()).digest()))
    if not keys:
        raise r.fail(("keys",), f"at least one [[keys]] entry (run `python -m guardproxy keygen`) "
                                f"or the {ENV_KEY} environment variable")

    log = r.table(data.get("log", {}), ("log",), _LOG_FIELDS)
    access = r.string(log, "access", ("log",), "-")

    t = r.table(data.get("timeouts", {}), ("timeouts",), _TIMEOUT_FIELDS)
    tv: dict[str, float] = {}
    for k, v in t.items():
        try:
            tv[k] = parse_duration(v)
        except ValueError as e:
            raise r.fail(("timeouts", k), str(e)) from None

    sv = r.table(data.get("server", {}), ("server",), _SERVER_FIELDS)
    limits: dict[str, int] = {}
    for k, v in sv.items():
        if k == "max_body":
            try:
                limits[k] = parse_size(v)
            except ValueError as e:
                raise r.fail(("server", k), str(e)) from None
        elif isinstance(v, int) and not isinstance(v, bool) and v >= 1:
            limits[k] = v
        else:
            raise r.fail(("server", k), "a whole number of at least 1")

    tls = None
    if "tls" in data:
        tt = r.table(data["tls"], ("tls",), _TLS_FIELDS)
        if set(tt) != _TLS_FIELDS:
            raise r.fail(("tls",), "both cert = \"<fullchain.pem>\" and key = \"<privkey.pem>\"")
        base = path.parent if path is not None else Path(".")
        files = {}
        for k in ("cert", "key"):
            f = Path(r.string(tt, k, ("tls",)))
            files[k] = f if f.is_absolute() else base / f
            if not files[k].is_file():
                raise r.fail(("tls", k), f"a readable PEM file; {str(files[k])!r} does not exist")
        tls = Tls(files["cert"], files["key"])
    return Config(path, lhost, lport, upstream, tuple(keys), access, Timeouts(**tv),
                  server=ServerLimits(**limits), tls=tls,
                  cors=_cors(r, data), limits=_limits(r, data), ban=_ban(r, data))


def _key_scopes(r: _Reader, k: Mapping[str, Any], where: tuple[Any, ...]) -> dict[str, Any]:
    admin = k.get("admin", False)
    if not isinstance(admin, bool):
        raise r.fail(where + ("admin",), "true or false")
    expires = k.get("expires")
    if isinstance(expires, datetime):
        expires = expires.date()
    if expires is not None and not isinstance(expires, date):
        raise r.fail(where + ("expires",), "a date like 2027-01-31 (no quotes)")
    return {"admin": admin, "models": r.strings(k, "models", where), "rate": r.rate(k, "rate", where),
            "max_concurrent": r.integer(k, "max_concurrent", where, None, 1), "expires": expires}


def _cors(r: _Reader, data: Mapping[str, Any]) -> Cors:
    c = r.table(data.get("cors", {}), ("cors",), _CORS_FIELDS)
    origins = r.strings(c, "origins", ("cors",)) or ()
    for o in origins:
        if o != "*" and not re.fullmatch(r"https?://[A-Za-z0-9.\-]+(:\d{1,5})?|https?://\[[0-9A-Fa-f:.]+\](:\d{1,5})?", o):
            raise r.fail(("cors", "origins"), f"exact origins like \"https://example.com\" (scheme://host[:port], "
                                              f"no path) or \"*\"; got {o!r}")
    max_age = r.integer(c, "max_age", ("cors",), 86400)
    return Cors(tuple(o.lower() if o != "*" else o for o in origins), max_age or 0)


def _limits(r: _Reader, data: Mapping[str, Any]) -> Limits:
    where = ("limits",)
    lt = r.table(data.get("limits", {}), where, _LIMIT_FIELDS)
    nets = r.strings(lt, "trusted_proxies", where) or ()
    for n in nets:
        try:
            ipaddress.ip_network(n, strict=False)
        except ValueError:
            raise r.fail(where + ("trusted_proxies",), f"CIDRs like \"10.0.0.0/8\" or addresses; got {n!r}") from None
    return Limits(per_ip=r.rate(lt, "per_ip", where),
                  max_concurrent=r.integer(lt, "max_concurrent", where, None, 1),
                  queue_timeout=r.duration(lt, "queue_timeout", where, 30.0),
                  trusted_proxies=nets,
                  max_queue=r.integer(lt, "max_queue", where, 1024, 1) or 1024,
                  max_tracked=r.integer(lt, "max_tracked", where, 65536, 16) or 65536)


def _ban(r: _Reader, data: Mapping[str, Any]) -> Ban:
    where = ("ban",)
    if "ban" not in data:
        return Ban()
    b = r.table(data["ban"], where, _BAN_FIELDS)
    return Ban(after_failures=r.integer(b, "after_failures", where, 20, 1) or 20,
               window=r.duration(b, "window", where, 600.0),
               duration=r.duration(b, "duration", where, 900.0))


def load_config(path: Path, *, env_key: str | None = None) -> Config:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: cannot read: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {getattr(e, 'strerror', None) or e}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        # tomllib's message already ends with "(at line N, column M)".
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return parse_config(data, path, text, env_key=env_key)


def find_config_path(explicit: str | None) -> tuple[Path, bool]:
    """The config file to use, and whether the user named it explicitly."""
    if explicit:
        return Path(explicit), True
    env = os.environ.get(ENV_CONFIG)
    if env:
        return Path(env), True
    return Path(DEFAULT_CONFIG_NAME), False


# --- writing --------------------------------------------------------------------

_TEMPLATE = """\
# guardproxy configuration. Keys are stored only as SHA-256 hashes;
# add one with `python -m guardproxy keygen --name NAME`.

listen = {listen}
upstream = {upstream}

[log]
access = "-"            # JSON lines: a file path, "-" for stdout, "" to turn off

[timeouts]
connect = "10s"         # opening a connection to the upstream (then 504)
read = "600s"           # silence between upstream bytes during a generation
header = "10s"          # a client's request head, from its first byte
keepalive = "30s"       # idle client connection between requests
grace = "30s"           # running streams get this long at shutdown
body = "30s"            # silence inside a request body (then 408)
write = "60s"           # a client that stops reading a response is dropped
first_byte = "300s"     # the upstream's first response byte (a cold model load is slow)

[server]
max_body = "64MiB"              # request bodies (then 413)
max_connections = 10000         # client connections in all (then 503)
max_connections_per_ip = 256    # client connections from one address (then 503)
max_headers = 100               # header fields per request (then 431)

# [tls]                         # serve HTTPS on the listen port
# cert = "/etc/letsencrypt/live/example.com/fullchain.pem"
# key = "/etc/letsencrypt/live/example.com/privkey.pem"

# [cors]                        # browser apps on other origins (exact origins)
# origins = ["https://app.example.com"]

# [limits]                      # protect the GPU
# per_ip = "30/min"
# max_concurrent = 8

# [ban]                         # repeated failed keys from one address
# after_failures = 20
"""


def key_block(name: str, key: str, *, admin: bool = False) -> str:
    entry: dict[str, Any] = {"name": name, "key_sha256": hash_key(key)}
    if admin:
        entry["admin"] = True
    return "\n" + tomli_w.dumps({"keys": [entry]})


def write_atomic(path: Path, text: str, *, private: bool) -> None:
    """Write via a temporary file and rename, so a crash never leaves half a file."""
    directory = path.parent if str(path.parent) else Path(".")
    mode = 0o600 if private else 0o644
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        pass
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def initial_config_text(key: str, name: str = "default", listen: str = DEFAULT_LISTEN,
                        upstream: str = DEFAULT_UPSTREAM) -> str:
    return _TEMPLATE.format(listen=tomli_w.dumps({"x": listen})[4:].strip(),
                            upstream=tomli_w.dumps({"x": upstream})[4:].strip()) + key_block(name, key)


def create_config(path: Path, key: str, name: str = "default", *, admin: bool = False) -> None:
    """A fresh config with one key; refuses to overwrite an existing file."""
    if path.exists():
        raise ConfigError(f"{path}: already exists; use `keygen` to add a key to it")
    text = initial_config_text(key, name)
    if admin:
        text = text[:text.rindex("\n[[keys]]")] + key_block(name, key, admin=True)
    parse_config(tomllib.loads(text), path, text)  # never write what we could not read back
    write_atomic(path, text, private=True)


def append_key(path: Path, name: str, key: str, *, admin: bool = False) -> None:
    """Add a [[keys]] block at the end of the file, leaving the rest byte-for-byte."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: cannot read: no such file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    existing = [k.get("name") for k in data.get("keys", []) if isinstance(k, dict)]
    if name in existing:
        raise ConfigError(f"{path}: keys.name: expected a new name; \"{name}\" already exists")
    if text and not text.endswith("\n"):
        text += "\n"
    new_text = text + key_block(name, key, admin=admin)
    parse_config(tomllib.loads(new_text), path, new_text)
    write_atomic(path, new_text, private=True)
