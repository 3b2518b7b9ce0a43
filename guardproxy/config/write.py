"""Writing config files: the fresh-config template, new keys, and saving an edit safely.

A save is atomic (a temporary file next to the real one, then a rename), goes
through a symlink to the file it points at, keeps the file's permissions, and
happens only when the new text reads back as the intended data and a valid config.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from .load import parse_config
from .model import DEFAULT_LISTEN, DEFAULT_UPSTREAM, KEY_PREFIX, CommandError, ConfigError
from .source import ConfigText

# --- keys -----------------------------------------------------------------

def generate_key() -> str:
    """A new API key: 256 random bits, URL-safe, recognisable by its prefix."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def toml_value(value: Any) -> str:
    """One value as TOML writes it (strings quoted and escaped), for lines written by hand."""
    return tomli_w.dumps({"x": value})[4:].strip()


# --- writing --------------------------------------------------------------------

_TEMPLATE = """\
# guardproxy configuration. Keys are stored only as SHA-256 hashes;
# add one with `python -m guardproxy keygen --name NAME`.

listen = {listen}
upstream = {upstream}

[log]
access = "-"            # JSON lines: a file path, "-" for stdout, "" to turn off
level = "info"          # start-up, reloads, warnings, errors (on stderr): debug, info, warning, error

[timeouts]
connect = "10s"         # opening a connection to the upstream (then 504)
read = "600s"           # silence between upstream bytes during a generation
header = "10s"          # a client's request head, from its first byte
keepalive = "30s"       # idle client connection between requests
grace = "30s"           # running streams get this long at shutdown
body = "30s"            # silence inside a request body (then 408)
body_total = "60s"      # a whole request body, admin blob uploads aside (then 408)
write = "60s"           # a client that stops reading a response is dropped
first_byte = "300s"     # the upstream's first response byte (a cold model load is slow)

[server]
max_body = "64MiB"              # request bodies (then 413)
max_blob = "200GiB"             # a model blob upload by an admin key (then 413)
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

# [metrics]                     # Prometheus: GET /metrics needs an admin key or one with metrics = true;
# listen = "127.0.0.1:9464"     # or a separate listener without keys (keep it on loopback)

[ban]                           # an address that sends 20 wrong keys within 10 minutes
after_failures = 20             # gets 429 for 15 minutes; delete this table to turn bans off
window = "10min"
duration = "15min"
"""


def key_block(name: str, key: str, *, admin: bool = False, newline: str = "\n") -> str:
    """A [[keys]] block, preceded by a blank line.

    Written line by line: a serialiser may choose an inline `keys = [...]`
    array, which lands inside whatever table ends the file.
    """
    lines = ["", "[[keys]]", f"name = {toml_value(name)}", f"key_sha256 = {toml_value(hash_key(key))}"]
    if admin:
        lines.append("admin = true")
    return newline.join(lines) + newline


def write_atomic(path: Path, text: str, *, private: bool, new: bool = False) -> Path:
    """Write via a temporary file and rename, so a crash never leaves half a file.

    A symlink is written through: the file it points at gets the new text and the
    link stays.  Returns the file actually written.  `new`: only if no file has
    the name yet, however close another writer comes (FileExistsError otherwise).
    """
    target = Path(os.path.realpath(path))
    mode, owner = (0o600 if private else 0o644), None
    try:
        st = target.stat()
        mode, owner = st.st_mode & 0o7777, (st.st_uid, st.st_gid)
    except FileNotFoundError:
        pass
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as e:
        raise ConfigError(f"{path}: cannot write: {e.strerror or e} (an edit is written next to the file, "
                          f"then renamed over it)") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if owner is not None and hasattr(os, "chown"):
            try:
                os.chown(tmp, *owner)  # root editing a service's file must not take it over
            except OSError:
                pass
        os.chmod(tmp, mode)
        if new:
            _name_new_file(tmp, target)
        else:
            _replace(tmp, target)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError) and not (new and isinstance(e, FileExistsError)):
            raise ConfigError(f"{path}: cannot write: {_why(e)}") from None
        raise
    _sync_directory(target.parent)
    return target


# Windows refuses to replace a file that another program holds open without delete sharing
# (an editor, a backup or virus scanner reading it): those let go within moments, so a few
# tries over about 1.5 s before giving up.  POSIX renames over open files.
_REPLACE_RETRIES = (0.05, 0.1, 0.2, 0.4, 0.75) if os.name == "nt" else ()
_SHARING_VIOLATION, _ACCESS_DENIED = 32, 5  # Windows error codes


def _replace(tmp: str, target: Path) -> None:
    for delay in _REPLACE_RETRIES:
        try:
            os.replace(tmp, target)
            return
        except PermissionError as e:
            if getattr(e, "winerror", None) not in (_SHARING_VIOLATION, _ACCESS_DENIED):
                raise
            time.sleep(delay)
    os.replace(tmp, target)


def _why(e: OSError) -> str:
    """The reason a write failed, in words that say what to do (the file itself is unchanged)."""
    code = getattr(e, "winerror", None)
    if code == _SHARING_VIOLATION:
        return "another program has the file open (close it and try again); the file is unchanged"
    if code == _ACCESS_DENIED:
        return ("access denied: the file is read-only, or open in another program, or needs an Administrator "
                "prompt; the file is unchanged")
    return str(e.strerror or e)


def _name_new_file(tmp: str, target: Path) -> None:
    """Give the written file the target's name unless a file already has it (FileExistsError)."""
    try:
        os.link(tmp, target)  # never replaces: the name is taken, or it is ours
    except FileExistsError:
        raise
    except OSError:
        # No hard links on this file system: claim the name first, then rename over the claim.
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.replace(tmp, target)
        return
    try:
        os.unlink(tmp)  # the file has its name; this was only its temporary second one
    except OSError:
        pass


def _sync_directory(directory: Path) -> None:
    """Make the rename itself durable: on POSIX it lives in the directory, which a crash could lose
    unless the directory is synced too.  Where a directory cannot be opened so (Windows), the
    rename is already as durable as the system makes it."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checked(source: ConfigText, new_text: str, expected: dict[str, Any], what: str, by_hand: str = "") -> Path:
    """Save `new_text` over the file only if it reads back as `expected` and as a valid config.

    `expected` is the data the edit means to produce; anything else (a layout the
    line edits misjudged) leaves the file as it was.  `what` names the change for
    the error, `by_hand` what the user can write instead.
    """
    try:
        data = tomllib.loads(new_text)
    except tomllib.TOMLDecodeError:
        data = None
    if data != expected:
        raise ConfigError(f"{source.path}: could not {what} in place (the file's layout is unusual); "
                          f"the file was not changed{': ' + by_hand if by_hand else ''}")
    parse_config(data, source.path, new_text)
    return write_atomic(source.path, source.with_text(new_text).encoded(), private=True)


def initial_config_text(key: str, name: str = "default", listen: str = DEFAULT_LISTEN,
                        upstream: str = DEFAULT_UPSTREAM, *, admin: bool = False) -> str:
    return _TEMPLATE.format(listen=toml_value(listen), upstream=toml_value(upstream)) + key_block(name, key, admin=admin)


def create_config(path: Path, key: str, name: str = "default", *, admin: bool = False) -> None:
    """A fresh config with one key; refuses to overwrite an existing file."""
    text = initial_config_text(key, name, admin=admin)
    parse_config(tomllib.loads(text), path, text)  # never write what we could not read back
    try:
        # No lock needed: the file appears whole under its name, or not at all when one is there.
        write_atomic(path, text, private=True, new=True)
    except FileExistsError:
        raise CommandError(f"{path}: already exists and is left as it is; use `keygen` to add a key to it") from None
