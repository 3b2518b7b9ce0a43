"""Writing config files: the fresh-config template, new keys, atomic writes that keep the user's bytes."""

from __future__ import annotations

import hashlib
import os
import secrets
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from .load import parse_config
from .model import DEFAULT_LISTEN, DEFAULT_UPSTREAM, KEY_PREFIX, ConfigError

# --- keys -----------------------------------------------------------------

def generate_key() -> str:
    """A new API key: 256 random bits, URL-safe, recognisable by its prefix."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


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
