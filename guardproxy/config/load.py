"""The configuration: read with tomllib, validated into the frozen dataclasses of model.py.

Every mistake raises one ConfigError whose text names the file, the line
when it can be found, the field, and what was expected, so start-up can stop
with a single line instead of a traceback.  Pure logic: no asyncio.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping

from .model import (ENV_KEY, DEFAULT_ACCESS_LOG, DEFAULT_LISTEN, DEFAULT_UPSTREAM, LOG_LEVELS, ON_REDIS_ERROR, Ban,
                    Budgets, Cluster, Config, ConfigError, Cors, KeyEntry, MetricsSettings, Routing, TrafficLimits,
                    ServerLimits, Timeouts, Tls, UpstreamHost, key_text_problem)
from .reader import Reader
from .redis_url import ENV_URL, RedisAddress
from .source import parse_toml, read_config_text
from .values import parse_budget, parse_duration, parse_hostport, parse_size, parse_upstream

# --- loading ------------------------------------------------------------------

_TOP = {"listen", "upstream", "keys", "log", "timeouts", "server", "tls", "cors", "limits", "ban", "metrics",
        "upstreams", "routing", "cluster", "budgets", "aliases"}
_UPSTREAM_FIELDS = {"name", "url", "max_concurrent", "weight", "models"}
_ROUTING_FIELDS = {"health_interval", "max_attempts"}
_BUDGET_FIELDS = {"reserve"}
_KEY_FIELDS = {"name", "key_sha256", "key", "admin", "models", "rate", "max_concurrent", "expires", "cloud",
               "max_keep_alive", "revoked", "previous_key_sha256", "previous_valid_until", "metrics", "tokens",
               "weight", "max_num_ctx", "max_output_tokens"}
_CORS_FIELDS = {"origins", "max_age"}
_LIMIT_FIELDS = {"per_ip", "max_concurrent", "queue_timeout", "trusted_proxies", "max_queue", "max_tracked",
                 "client_address_header"}
CLIENT_ADDRESS_HEADERS = ("x-forwarded-for", "forwarded", "x-real-ip")
_BAN_FIELDS = {"after_failures", "window", "duration"}
_LOG_FIELDS = {"access", "level"}
_METRICS_FIELDS = {"listen"}
_TIMEOUT_FIELDS = {f for f in Timeouts.__dataclass_fields__}
_SERVER_FIELDS = {f for f in ServerLimits.__dataclass_fields__}
_TLS_FIELDS = {"cert", "key"}
_CLUSTER_FIELDS = {f for f in Cluster.__dataclass_fields__}


def beside(config: Path, value: str | Path) -> Path:
    """A path the config names: a relative one is next to the config file, wherever the command runs
    (the one rule for log.access, the TLS files and the state file)."""
    p = Path(value).expanduser()
    return p if p.is_absolute() else config.absolute().parent / p


def parse_config(data: Mapping[str, Any], path: Path | None, text: str = "", *,
                 env_key: str | None = None) -> Config:
    r = Reader(path, text)
    r.table(data, (), _TOP)
    listen = r.string(data, "listen", (), DEFAULT_LISTEN)
    try:
        lhost, lport = parse_hostport(listen)
    except ValueError as e:
        raise r.fail(("listen",), str(e)) from None
    if isinstance(data.get("upstream"), (list, dict)):  # [[upstream]] or [upstream]: a table, not the string
        several = isinstance(data["upstream"], list)
        raise ConfigError(f"{r.location(('upstream', 0) if several else ('upstream',))}: "
                          f"{'[[upstream]]' if several else '[upstream]'}: did you mean [[upstreams]]? "
                          f"Several hosts are [[upstreams]] blocks (with an s); one host is "
                          f"upstream = \"http://HOST:11434\" at the top of the file")
    up = r.string(data, "upstream", (), DEFAULT_UPSTREAM)
    try:
        upstream = parse_upstream(up)
    except ValueError as e:
        raise r.fail(("upstream",), str(e)) from None
    upstreams = _upstreams(r, data)
    if upstreams:
        upstream = upstreams[0].address

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
            digest, plaintext = _sha256(r, k, "key_sha256", where), False
        else:
            plain = r.string(k, "key", where)
            problem = key_text_problem(plain)
            if problem:
                raise r.fail(where + ("key",), problem)
            digest, plaintext = hashlib.sha256(plain.encode()).digest(), True
        keys.append(KeyEntry(name, digest, plaintext, **_key_scopes(r, k, where), **_key_lifecycle(r, k, where)))
    if env_key:
        problem = key_text_problem(env_key)
        if problem:
            raise ConfigError(f"{ENV_KEY} (environment variable): expected {problem}")
        keys.append(KeyEntry("env", hashlib.sha256(env_key.encode()).digest()))
    if not keys:
        raise r.fail(("keys",), f"at least one [[keys]] entry (run `python -m guardproxy keygen`) "
                                f"or the {ENV_KEY} environment variable")

    log = r.table(data.get("log", {}), ("log",), _LOG_FIELDS)
    access = r.string(log, "access", ("log",), DEFAULT_ACCESS_LOG)
    if access not in ("", "-") and path is not None:
        access = str(beside(path, access))
    level = r.string(log, "level", ("log",), Config.log_level).strip().lower()
    if level not in LOG_LEVELS:
        raise r.fail(("log", "level"), "one of " + ", ".join(f'"{v}"' for v in LOG_LEVELS))

    t = r.table(data.get("timeouts", {}), ("timeouts",), _TIMEOUT_FIELDS)
    tv = {k: r.duration(t, k, ("timeouts",), 0.0) for k in t}

    sv = r.table(data.get("server", {}), ("server",), _SERVER_FIELDS)
    limits: dict[str, Any] = {}
    for k, v in sv.items():
        if k == "zero_copy":
            limits[k] = r.flag(sv, k, ("server",))
        elif k in ("max_body", "max_blob"):
            limits[k] = r.optional(sv, k, ("server",), parse_size)
        elif isinstance(v, int) and not isinstance(v, bool) and v >= 1:
            limits[k] = v
        else:
            raise r.fail(("server", k), "a whole number of at least 1")

    tls = None
    if "tls" in data:
        tt = r.table(data["tls"], ("tls",), _TLS_FIELDS)
        if set(tt) != _TLS_FIELDS:
            raise r.fail(("tls",), "both cert = \"<fullchain.pem>\" and key = \"<privkey.pem>\"")
        files = {}
        for k in ("cert", "key"):
            f = Path(r.string(tt, k, ("tls",)))
            files[k] = f if path is None else beside(path, f)
            if not files[k].is_file():
                raise r.fail(("tls", k), f"a readable PEM file; {str(files[k])!r} does not exist")
        tls = Tls(files["cert"], files["key"])
    return Config(path, lhost, lport, upstream, tuple(keys), access, Timeouts(**tv),
                  server=ServerLimits(**limits), tls=tls,
                  cors=_cors(r, data), limits=_limits(r, data), ban=_ban(r, data), log_level=level,
                  metrics=_metrics(r, data), upstreams=upstreams, routing=_routing(r, data),
                  cluster=_cluster(r, data), budgets=_budgets(r, data), aliases=_aliases(r, data))


def _budgets(r: Reader, data: Mapping[str, Any]) -> Budgets:
    where = ("budgets",)
    bt = r.table(data.get("budgets", {}), where, _BUDGET_FIELDS)
    return Budgets(reserve=r.integer(bt, "reserve", where, Budgets.reserve, 0))


_HOST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _upstreams(r: Reader, data: Mapping[str, Any]) -> tuple[UpstreamHost, ...]:
    """[[upstreams]]: several Ollama hosts, instead of the one `upstream`."""
    if "upstreams" not in data:
        return ()
    if "upstream" in data:
        raise r.fail(("upstream",), "either `upstream = \"...\"` or [[upstreams]] tables, not both")
    raw = data["upstreams"]
    if not isinstance(raw, list) or not raw:
        raise r.fail(("upstreams",), "one or more tables written as [[upstreams]]")
    hosts: list[UpstreamHost] = []
    for i, u in enumerate(raw):
        where = ("upstreams", i)
        r.table(u, where, _UPSTREAM_FIELDS)
        name = r.string(u, "name", where)
        if not _HOST_NAME.fullmatch(name):
            raise r.fail(where + ("name",), "a name of letters, digits, '.', '_' and '-' (at most 64)")
        if any(h.name == name for h in hosts):
            raise r.fail(where + ("name",), f"a unique name; \"{name}\" is used twice")
        try:
            address = parse_upstream(r.string(u, "url", where))
        except ValueError as e:
            raise r.fail(where + ("url",), str(e)) from None
        if "max_concurrent" not in u:
            raise r.fail(where, "max_concurrent = <the generations this host runs at once, "
                                "OLLAMA_NUM_PARALLEL x models>, e.g. 4")
        weight = u.get("weight", UpstreamHost.weight)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 < weight <= 1000:
            raise r.fail(where + ("weight",), "a number above 0, e.g. 1 or 2.5")
        hosts.append(UpstreamHost(name, address, r.integer(u, "max_concurrent", where, 1, 1), float(weight),
                                  r.strings(u, "models", where)))
    return tuple(hosts)


def _routing(r: Reader, data: Mapping[str, Any]) -> Routing:
    where = ("routing",)
    rt = r.table(data.get("routing", {}), where, _ROUTING_FIELDS)
    interval = r.duration(rt, "health_interval", where, Routing.health_interval)
    if 0 < interval < 0.1:
        raise r.fail(where + ("health_interval",), "0 (no health checks) or at least \"100ms\"")
    return Routing(health_interval=interval,
                   max_attempts=r.integer(rt, "max_attempts", where, Routing.max_attempts, 1))


def _key_scopes(r: Reader, k: Mapping[str, Any], where: tuple[Any, ...]) -> dict[str, Any]:
    admin = r.flag(k, "admin", where)
    expires = r.date(k, "expires", where, "2027-01-31")
    cloud, metrics = r.flag(k, "cloud", where), r.flag(k, "metrics", where)
    keep_alive = r.optional(k, "max_keep_alive", where, parse_duration)
    if keep_alive == 0.0:
        raise r.fail(where + ("max_keep_alive",), "a duration above zero, like \"30m\"")
    return {"admin": admin, "models": r.strings(k, "models", where), "rate": r.rate(k, "rate", where),
            "max_concurrent": r.integer(k, "max_concurrent", where, None, 1), "expires": expires,
            "cloud": cloud, "max_keep_alive": keep_alive, "metrics": metrics,
            "tokens": r.optional(k, "tokens", where, parse_budget),
            "max_num_ctx": r.integer(k, "max_num_ctx", where, None, 1),
            "max_output_tokens": r.integer(k, "max_output_tokens", where, None, 1),
            "weight": _key_weight(r, k, where)}


def _key_weight(r: Reader, k: Mapping[str, Any], where: tuple[Any, ...]) -> float:
    weight = k.get("weight", KeyEntry.weight)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 1 <= weight <= 1000:
        raise r.fail(where + ("weight",), "a number from 1 to 1000: the key's grants per turn while keys wait")
    return float(weight)


def _aliases(r: Reader, data: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """[aliases]: "name clients ask for" = "model it runs"; one step only (a target is never an alias).

    Names compare as Ollama's do, in any letter case (decisions/aliases.py adds the default tag).
    """
    where = ("aliases",)
    if "aliases" not in data:
        return ()
    table = data["aliases"]
    if not isinstance(table, dict):
        raise r.fail(where, 'a table of "name clients ask for" = "model it runs", e.g. "gpt-4o-mini" = "llama3.2:3b"')
    out: dict[str, tuple[str, str]] = {}
    for name, target in table.items():
        if not isinstance(target, str) or not target.strip() or any(c.isspace() for c in target.strip()):
            raise r.fail(where + (name,), 'a model name in quotes, e.g. "llama3.2:3b"')
        alias = name.strip()
        if not alias or any(c.isspace() or ord(c) < 0x20 for c in alias):
            raise r.fail(where + (name,), "an alias without spaces or control characters")
        if alias.lower() in out:
            raise r.fail(where + (name,), f"one alias per name; {out[alias.lower()][0]!r} is the same in another case")
        out[alias.lower()] = (alias, target.strip())
    for alias, target in out.values():
        if target.lower() in out:
            raise r.fail(where + (alias,), f"a model that runs, not an alias ({target!r} is one)")
    return tuple(out.values())


def _sha256(r: Reader, k: Mapping[str, Any], field: str, where: tuple[Any, ...]) -> bytes:
    h = r.string(k, field, where)
    if not re.fullmatch(r"[0-9a-fA-F]{64}", h):
        raise r.fail(where + (field,), "64 hexadecimal characters (a SHA-256)")
    return bytes.fromhex(h)


def _key_lifecycle(r: Reader, k: Mapping[str, Any], where: tuple[Any, ...]) -> dict[str, Any]:
    """revoked, and the previous key a rotation keeps valid for a while (written by `keys revoke/rotate`)."""
    revoked = r.date(k, "revoked", where, "2026-11-29")
    if ("previous_key_sha256" in k) != ("previous_valid_until" in k):
        raise r.fail(where, "previous_key_sha256 and previous_valid_until together (or neither)")
    if "previous_key_sha256" not in k:
        return {"revoked": revoked}
    until = k["previous_valid_until"]
    if not isinstance(until, datetime) or until.tzinfo is None:
        raise r.fail(where + ("previous_valid_until",), "a UTC time like 2026-11-30T12:00:00Z (no quotes)")
    return {"revoked": revoked, "previous_sha256": _sha256(r, k, "previous_key_sha256", where),
            "previous_valid_until": until}


def _cors(r: Reader, data: Mapping[str, Any]) -> Cors:
    c = r.table(data.get("cors", {}), ("cors",), _CORS_FIELDS)
    origins = r.strings(c, "origins", ("cors",)) or ()
    for o in origins:
        if o != "*" and not re.fullmatch(r"https?://[A-Za-z0-9.\-]+(:\d{1,5})?|https?://\[[0-9A-Fa-f:.]+\](:\d{1,5})?", o):
            raise r.fail(("cors", "origins"), f"exact origins like \"https://example.com\" (scheme://host[:port], "
                                              f"no path) or \"*\"; got {o!r}")
    max_age = r.integer(c, "max_age", ("cors",), Cors.max_age)
    return Cors(tuple(o.lower() if o != "*" else o for o in origins), max_age)


def _limits(r: Reader, data: Mapping[str, Any]) -> TrafficLimits:
    where = ("limits",)
    lt = r.table(data.get("limits", {}), where, _LIMIT_FIELDS)
    nets = r.strings(lt, "trusted_proxies", where) or ()
    for n in nets:
        try:
            ipaddress.ip_network(n, strict=False)
        except ValueError:
            raise r.fail(where + ("trusted_proxies",), f"CIDRs like \"10.0.0.0/8\" or addresses; got {n!r}") from None
    return TrafficLimits(per_ip=r.rate(lt, "per_ip", where),
                         max_concurrent=r.integer(lt, "max_concurrent", where, None, 1),
                         queue_timeout=r.duration(lt, "queue_timeout", where, TrafficLimits.queue_timeout),
                         trusted_proxies=nets,
                         max_queue=r.integer(lt, "max_queue", where, TrafficLimits.max_queue, 1),
                         max_tracked=r.integer(lt, "max_tracked", where, TrafficLimits.max_tracked, 16),
                         client_address_header=_client_address_header(r, lt, where))


def _client_address_header(r: Reader, lt: Mapping[str, Any], where: tuple[Any, ...]) -> str:
    value = r.string(lt, "client_address_header", where, TrafficLimits.client_address_header).strip().lower()
    if value not in CLIENT_ADDRESS_HEADERS:
        raise r.fail(where + ("client_address_header",), "one of " + ", ".join(f'"{h}"' for h in CLIENT_ADDRESS_HEADERS))
    return value


def _ban(r: Reader, data: Mapping[str, Any]) -> Ban:
    where = ("ban",)
    if "ban" not in data:
        return Ban()
    b = r.table(data["ban"], where, _BAN_FIELDS)
    return Ban(after_failures=r.integer(b, "after_failures", where, Ban.ENABLED_AFTER_FAILURES, 1),
               window=r.duration(b, "window", where, Ban.window),
               duration=r.duration(b, "duration", where, Ban.duration))


def _metrics(r: Reader, data: Mapping[str, Any]) -> MetricsSettings:
    where = ("metrics",)
    m = r.table(data.get("metrics", {}), where, _METRICS_FIELDS)
    if "listen" not in m:
        return MetricsSettings()
    try:
        return MetricsSettings(listen=parse_hostport(r.string(m, "listen", where)))
    except ValueError as e:
        raise r.fail(where + ("listen",), str(e)) from None


_REDIS_URL = "a URL like \"redis://127.0.0.1:6379/0\" or \"rediss://:password@host:6380/0\""


def _cluster(r: Reader, data: Mapping[str, Any]) -> Cluster | None:
    where = ("cluster",)
    if "cluster" not in data:
        return None
    c = r.table(data["cluster"], where, _CLUSTER_FIELDS)
    url = r.string(c, "redis", where, Cluster.redis)
    if url:
        try:
            RedisAddress.from_url(url)
        except ValueError as e:
            raise r.fail(where + ("redis",), f"{_REDIS_URL} ({e})") from None
    prefix = r.string(c, "key_prefix", where, Cluster.key_prefix)
    lease_ttl = r.duration(c, "lease_ttl", where, Cluster.lease_ttl)
    if lease_ttl < 0.1:
        raise r.fail(where + ("lease_ttl",), "a duration of at least 100ms, like \"15s\"")
    op_timeout = r.duration(c, "op_timeout", where, Cluster.op_timeout)
    if not 0.001 <= op_timeout <= 10:
        raise r.fail(where + ("op_timeout",), "a duration between 1ms and 10s, like \"50ms\"")
    rule = r.string(c, "on_redis_error", where, Cluster.on_redis_error)
    if rule not in ON_REDIS_ERROR:
        raise r.fail(where + ("on_redis_error",), "one of " + ", ".join(f'"{v}"' for v in ON_REDIS_ERROR))
    sentinels = r.strings(c, "sentinels", where) or ()
    for i, s in enumerate(sentinels):
        try:
            parse_hostport(s)
        except ValueError as e:
            raise r.fail(where + ("sentinels", i), f"a Sentinel as HOST:PORT, like \"10.0.0.7:26379\" ({e})") from None
    master = r.string(c, "sentinel_master", where, Cluster.sentinel_master)
    if sentinels and not master:
        raise r.fail(where + ("sentinel_master",), "the name the Sentinels monitor the primary by, like \"mymaster\"")
    if master and not sentinels:
        raise r.fail(where + ("sentinels",), "the Sentinels to ask for sentinel_master, like [\"10.0.0.7:26379\"]")
    base = r.path.parent if r.path is not None else Path(".")
    files = {}
    for k in ("tls_ca", "tls_cert", "tls_key"):
        name = r.string(c, k, where, "")
        if name:
            f = Path(name) if Path(name).is_absolute() else base / name
            if not f.is_file():
                raise r.fail(where + (k,), f"a readable PEM file; {str(f)!r} does not exist")
            name = str(f)
        files[k] = name
    if bool(files["tls_cert"]) != bool(files["tls_key"]):
        raise r.fail(where + ("tls_key" if files["tls_cert"] else "tls_cert",),
                     "tls_cert and tls_key together (a client certificate and its key)")
    server_name = r.string(c, "tls_server_name", where, "")
    tls_set = [k for k, v in (*files.items(), ("tls_server_name", server_name)) if v]
    if tls_set and url and not url.startswith("rediss://"):
        raise r.fail(where + (tls_set[0],), "set only with a rediss:// URL in [cluster] redis (it applies to TLS)")
    return Cluster(url, prefix, lease_ttl, op_timeout, rule, sentinels, master, files["tls_ca"], files["tls_cert"],
                   files["tls_key"], server_name)


def cluster_address(config: Config, environ: Mapping[str, str]) -> RedisAddress:
    """Where Redis is: $GUARDPROXY_REDIS_URL when set (a password need not sit in the file), else
    [cluster] redis."""
    cluster = config.cluster
    assert cluster is not None
    return replace(_url_address(config, environ),
                   sentinels=tuple(parse_hostport(s) for s in cluster.sentinels),
                   sentinel_master=cluster.sentinel_master, tls_ca=cluster.tls_ca or None,
                   tls_cert=cluster.tls_cert or None, tls_key=cluster.tls_key or None,
                   tls_server_name=cluster.tls_server_name or None)


def _url_address(config: Config, environ: Mapping[str, str]) -> RedisAddress:
    assert config.cluster is not None
    from_env = environ.get(ENV_URL)
    if from_env:
        try:
            return RedisAddress.from_url(from_env)
        except ValueError as e:
            raise ConfigError(f"{ENV_URL} (environment variable): expected {_REDIS_URL} ({e})") from None
    r, where = Reader(config.path, ""), ("cluster", "redis")
    if not config.cluster.redis:
        if config.cluster.sentinels:   # the Sentinels say where; a URL would only add a password or a db
            return RedisAddress()
        raise r.fail(where, f"{_REDIS_URL} (or the {ENV_URL} environment variable)")
    try:
        return RedisAddress.from_url(config.cluster.redis)
    except ValueError as e:
        raise r.fail(where, f"{_REDIS_URL} ({e})") from None


def load_config(path: Path, *, env_key: str | None = None) -> Config:
    source = read_config_text(path)
    return parse_config(parse_toml(source), path, source.text, env_key=env_key)
