"""Where Redis is: redis:// and rediss:// URLs, and $GUARDPROXY_REDIS_URL to keep a password out of the config.

Pure (no sockets), so loading a config can check a URL without connecting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlsplit

from .model import url_host

ENV_URL = "GUARDPROXY_REDIS_URL"
DEFAULT_PORT = 6379


@dataclass(frozen=True)
class RedisAddress:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    db: int = 0

    @classmethod
    def from_url(cls, url: str) -> RedisAddress:
        """redis://[[user]:password@]host[:port][/db], or rediss:// for TLS; percent-encode the password."""
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError("a Redis URL starts with redis:// or rediss://")
        if parts.query or parts.fragment:
            raise ValueError("a Redis URL takes no ?query or #fragment")
        if not parts.hostname:
            raise ValueError("a Redis URL needs a host")
        db = parts.path.strip("/")
        if db and not db.isdigit():
            raise ValueError("the path of a Redis URL is a database number, as in redis://host:6379/0")
        username = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password else None
        if username and password is None:
            raise ValueError("a user name in a Redis URL needs a password")
        return cls(parts.hostname, parts.port or DEFAULT_PORT, parts.scheme == "rediss",
                   username, password, int(db or 0))

    @property
    def url(self) -> str:
        """The URL with any password masked, for logs and `doctor`."""
        auth = ""
        if self.password is not None:
            auth = f"{quote(self.username or '', safe='')}:***@"
        return f"{'rediss' if self.tls else 'redis'}://{auth}{url_host(self.host)}:{self.port}/{self.db}"
