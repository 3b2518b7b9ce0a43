"""Where Redis is: redis:// and rediss:// URLs, and $GUARDPROXY_REDIS_URL to keep a password out of the config;
with [cluster] sentinels, the Sentinels that name the primary; and the TLS files of rediss://.

Pure (no sockets), so loading a config can check a URL without connecting.

Scope: one standalone Redis (7.0 or later) or Valkey, with or without Sentinel, over TCP or
TLS, with a password or an ACL user.  Redis Cluster is refused: the scripts touch keys of one key
and one host in one atomic call, which Redis Cluster allows only within one hash slot.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlsplit

from .model import url_host

ENV_URL = "GUARDPROXY_REDIS_URL"
DEFAULT_PORT = 6379


CLUSTER_REFUSED = ("Redis Cluster is not supported: guardproxy needs one standalone Redis or Valkey "
                   "(with or without Sentinel)")


@dataclass(frozen=True)
class RedisAddress:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    db: int = 0
    sentinels: tuple[tuple[str, int], ...] = ()   # when set, host and port are the Sentinels' answer
    sentinel_master: str = ""
    tls_ca: str | None = None          # PEM files (rediss://); None: the system's CAs, no client certificate
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_server_name: str | None = None

    @classmethod
    def from_url(cls, url: str) -> RedisAddress:
        """redis://[[user]:password@]host[:port][/db], or rediss:// for TLS; percent-encode the password."""
        parts = urlsplit(url)
        if parts.scheme in ("redis+cluster", "rediss+cluster"):
            raise ValueError(CLUSTER_REFUSED)
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
        scheme = 'rediss' if self.tls else 'redis'
        if self.sentinels:
            via = ",".join(f"{url_host(h)}:{p}" for h, p in self.sentinels)
            return f"{scheme}://{auth}{quote(self.sentinel_master, safe='')}/{self.db} (Sentinel {via})"
        return f"{scheme}://{auth}{url_host(self.host)}:{self.port}/{self.db}"
