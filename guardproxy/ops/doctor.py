"""`guardproxy doctor`: inspect the local set-up and explain each problem in one line with its fix.

Checks, in order: the config is valid; keys are present and none stored in
plaintext; the config file is private; for every upstream host: it answers
/api/version, the models its /api/tags lists, and (a local host) Ollama is not
listening on an address other machines can reach (read from the operating
system's socket table, never by sending traffic to a LAN or public address);
the listen port is free; TLS files are readable; the open-file limit; on
Windows, the service and its firewall rule; on Linux, the systemd unit's
state when one is installed.

Blocking and standard library only: it runs before anything else is up.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import http.client
import ipaddress
import os
import socket
import ssl
import sys
from pathlib import Path
from typing import Any, Mapping

from . import listening, redischeck, systemd
from .finding import FAIL, INFO, OK, WARN, Finding
from .hostcheck import check_hosts, guardproxy_answers, hosts_in
from .winservice import sc as winservice
from ..config.load import cluster_address, parse_config
from ..config.paths import CONFIG_HELP, config_candidates, env_api_key, existing_config
from ..config.model import DEFAULT_LISTEN, ENV_KEY, Config, ConfigError, ServerLimits, Upstream, url_host
from ..config.reader import Reader
from ..config.redis_url import RedisAddress
from ..config.source import parse_toml, read_config_text
from ..engine.accesslog import access_log_problem
from ..config.values import is_loopback_host, parse_hostport
from ..engine.fdlimit import files_needed

__all__ = ["OK", "INFO", "WARN", "FAIL", "Finding", "run_doctor", "check_open_files"]

# --- config and keys -----------------------------------------------------------------

def check_config(path: Path | None, environ: Mapping[str, str],
                 windows: bool) -> tuple[Config | None, dict[str, Any], list[Finding]]:
    env_key = env_api_key(environ)
    if path is None:
        fix = "run `guardproxy init` here" + (", or `guardproxy service install`" if windows else "")
        if env_key:
            return (parse_config({}, None, env_key=env_key), {},
                    [Finding(INFO, f"no config file; using defaults and the key in ${ENV_KEY}")])
        looked = ", ".join(config_candidates(None, environ, windows))
        return None, {}, [Finding(FAIL, f"no config file found ({looked}) and ${ENV_KEY} is not set", fix)]
    # The plain TOML is kept as well: the checks that go on after an invalid config read what they can of it.
    raw: dict[str, Any] = {}
    try:
        source = read_config_text(path)
        raw = parse_toml(source)
        config = parse_config(raw, path, source.text, env_key=env_key)
    except ConfigError as e:
        return None, raw, [Finding(FAIL, f"config: {e}", f"edit {path} at the line named")]
    # What `run` refuses after reading the file: the same words, so "valid" means `run` starts.
    problem = access_log_problem(config.access_log)
    if problem is not None:
        where = Reader(path, source.text).location(("log", "access"))
        return config, raw, [Finding(FAIL, f"config: {where}: log.access: {problem}; `run` refuses to start",
                                     "create that folder and let the account guardproxy runs as write there, "
                                     "or set [log] access to another file, \"-\" (stdout) or \"\" (off)")]
    return config, raw, [Finding(OK, f"config valid: {path.resolve()}")]


def check_keys(config: Config, raw: Mapping[str, Any]) -> list[Finding]:
    out: list[Finding] = []
    plain = {k.get("name"): k.get("key") for k in raw.get("keys", []) if isinstance(k, dict) and "key" in k}
    for entry in config.keys:
        if entry.plaintext:
            digest = hashlib.sha256(str(plain.get(entry.name, "")).encode()).hexdigest()
            out.append(Finding(WARN, f"key \"{entry.name}\" is stored in plaintext in {config.path}",
                               f"replace its `key = \"...\"` line with `key_sha256 = \"{digest}\"`"))
    hashed = sum(not k.plaintext for k in config.keys)
    out.insert(0, Finding(OK, f"{len(config.keys)} key{'s' if len(config.keys) != 1 else ''} "
                              f"({hashed} stored as SHA-256)"))
    return out


def config_secrets(raw: Mapping[str, Any]) -> list[str]:
    """What in the file is secret: plaintext keys, a password in [cluster] redis.  Key hashes are not."""
    out = []
    keys = raw.get("keys")
    if isinstance(keys, list) and any(isinstance(k, dict) and "key" in k for k in keys):
        out.append("plaintext keys")
    cluster = raw.get("cluster")
    url = cluster.get("redis") if isinstance(cluster, dict) else None
    if isinstance(url, str):
        try:
            if RedisAddress.from_url(url).password is not None:
                out.append("the Redis password")
        except ValueError:
            pass
    return out


def check_file_mode(path: Path, raw: Mapping[str, Any] | None = None, *, service: bool = False) -> list[Finding]:
    """Whether other users can read a secret in the config.

    A config of key hashes may be world-readable: that is the layout of the systemd unit, whose
    DynamicUser exists only while it runs, so the file cannot be made its own (chmod 600 would stop
    the service).  Only a secret in the file makes the mode matter.  `service`: a systemd unit is
    installed, so the fix is a group, never chmod 600."""
    if os.name != "posix":
        return []
    try:
        mode = path.stat().st_mode & 0o777
    except OSError:
        return []
    secrets = config_secrets(raw if raw is not None else {})
    if not mode & 0o007:
        return []
    if not secrets:
        return [Finding(OK, f"{path} is readable by other users (mode {mode:o}), which is fine: "
                            f"it holds key hashes only")]
    what = " and ".join(secrets)
    move = ("replace each `key = \"...\"` with its key_sha256" if "plaintext keys" in secrets else "") + \
           (" and " if len(secrets) == 2 else "") + \
           ("move the Redis password to $GUARDPROXY_REDIS_URL" if "the Redis password" in secrets else "")
    group = (f"chgrp guardproxy-config {path} && chmod 0640 {path}, with SupplementaryGroups=guardproxy-config "
             f"in the unit (docs/linux-service.md)")
    fix = f"{move}; or let only guardproxy's group read it: {group}" if service else \
          f"{move}; or chmod 600 {path} if guardproxy runs as its owner (under systemd: {group})"
    return [Finding(WARN, f"{path} holds {what} and is readable by every user (mode {mode:o})", fix)]


# --- the shared state ------------------------------------------------------------------

def check_redis(config: Config, environ: Mapping[str, str]) -> list[Finding]:
    """[cluster]: Redis answers, takes the password, is new enough, and is the primary (a replica refuses writes)."""
    try:
        address = cluster_address(config, environ)
    except ConfigError as e:
        return [Finding(FAIL, f"cluster: {e}", "set [cluster] redis or $GUARDPROXY_REDIS_URL")]
    rule = config.cluster.on_redis_error if config.cluster is not None else ""
    try:
        # The client refuses, as the gate does, a replica, a Redis older than 7 and a Cluster node.
        found = redischeck.inspect(address)
    except redischeck.RedisDown as e:
        return [Finding(FAIL, f"cluster: {e}", redischeck.fix_for(str(e), rule))]
    if found.role not in (None, "master"):  # (a server that let the handshake through all the same)
        message = f"Redis at {address.url} is a replica, not the primary"
        return [Finding(FAIL, f"cluster: {message}", redischeck.fix_for(message, rule))]
    return [Finding(OK, f"cluster: Redis {found.version or '(version unknown)'} at {address.url} answers, "
                        f"takes the password and is the primary")]


# --- this machine -----------------------------------------------------------------------

def _bindable_family(host: str) -> tuple[socket.AddressFamily, str] | None:
    """Loopback and wildcard addresses only: binding there is local and sends nothing."""
    if host.lower() == "localhost":
        return socket.AF_INET, "127.0.0.1"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if not (ip.is_loopback or ip.is_unspecified):
        return None
    return (socket.AF_INET6 if ip.version == 6 else socket.AF_INET), str(ip)


def check_listen_port(host: str, port: int) -> list[Finding]:
    target = _bindable_family(host)
    shown = f"{url_host(host)}:{port}"
    if target is None:
        return [Finding(INFO, f"listen address {shown} not tested (only loopback and wildcard addresses are)")]
    family, addr = target
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if os.name == "posix":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does
        sock.bind((addr, port))
    except OSError as e:
        if e.errno in (errno.EADDRINUSE, getattr(errno, "WSAEADDRINUSE", -1)) or getattr(e, "winerror", 0) == 10048:
            if guardproxy_answers(addr, port):
                return [Finding(OK, f"guardproxy is already running on {shown}")]
            return [Finding(FAIL, f"listen port {shown} is taken by another program",
                            "stop that program, or choose another `listen` port in the config")]
        if e.errno == errno.EACCES:
            return [Finding(FAIL, f"not allowed to listen on {shown}", "use a port above 1023")]
        return [Finding(FAIL, f"cannot listen on {shown}: {e.strerror or e}", "check `listen` in the config")]
    finally:
        sock.close()
    return [Finding(OK, f"listen address {shown} is free")]


def check_tls(raw: Mapping[str, Any], base: Path) -> list[Finding]:
    """A [tls] table's files: readable, and the certificate matches the key."""
    tls = raw.get("tls")
    if not isinstance(tls, dict):
        return []
    files = {k: v for k, v in tls.items()
             if isinstance(v, str) and v and any(w in k.lower() for w in ("cert", "key", "file", "ca", "chain"))}
    if not files:
        return [Finding(WARN, "[tls] names no certificate or key file", "add the certificate and key paths")]
    out: list[Finding] = []
    resolved: dict[str, Path] = {}
    for field, value in files.items():
        p = Path(value).expanduser()
        if not p.is_absolute() and not p.exists():
            p = base / p
        resolved[field] = p
        try:
            with open(p, "rb") as f:
                f.read(1)
        except OSError as e:
            out.append(Finding(FAIL, f"tls.{field}: cannot read {p}: {e.strerror}",
                               "fix the path, or the file's permissions for the account guardproxy runs as"))
    cert = next((f for f in resolved if "cert" in f.lower()), None)
    key = next((f for f in resolved if "key" in f.lower() and "cert" not in f.lower()), None)
    if not out and cert and key:
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(resolved[cert], resolved[key])
        except (ssl.SSLError, OSError) as e:
            out.append(Finding(FAIL, f"tls: {resolved[cert]} and {resolved[key]} do not load as a certificate "
                                     f"and its key ({getattr(e, 'reason', None) or e})",
                               "use the PEM certificate (chain) and the private key that belongs to it"))
    if not out:
        out.append(Finding(OK, f"TLS files readable: {', '.join(str(p) for p in resolved.values())}"))
    return out


def check_open_files(limits: tuple[int, int] | None = None,
                     max_connections: int = ServerLimits.max_connections) -> list[Finding]:
    """The (soft, hard) open-file limit against what server.max_connections needs, as `run` judges it: it
    raises the soft limit towards the hard one itself (engine/fdlimit.py), so only a low hard limit is a problem."""
    if limits is None:
        try:
            import resource
        except ImportError:
            return []  # Windows: no such per-process limit
        limits = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft, hard = limits
    needed = files_needed(max_connections)
    if soft == -1 or soft >= needed:
        shown = "unlimited" if soft == -1 else f"{soft} (about {soft // 2} simultaneous streams)"
        return [Finding(OK, f"open-file limit {shown}")]
    if hard == -1 or hard >= needed:
        return [Finding(OK, f"open-file limit {soft}, raised to {needed} at start-up "
                            f"(server.max_connections = {max_connections})")]
    return [Finding(WARN, f"open-file limit is {hard} at most (about {hard // 2} simultaneous streams), "
                          f"but server.max_connections = {max_connections} needs about {needed}",
                    f"raise the hard limit: LimitNOFILE={max(needed, 65536)} in the systemd unit, or "
                    f"`ulimit -n {needed}` as root in the shell that starts guardproxy; or lower max_connections")]


def check_windows_service(name: str, listen_host: str, port: int) -> list[Finding]:
    state = winservice.service_state(name)
    if state is None:
        return [Finding(INFO, f"no Windows service \"{name}\" installed",
                        "`guardproxy service install --open-firewall` in an Administrator prompt, "
                        "to start guardproxy on boot")]
    if state == "UNKNOWN":
        return [Finding(WARN, f"cannot tell the state of Windows service \"{name}\" (sc.exe gave no answer)",
                        f"`sc.exe query {name}` in a prompt shows it")]
    out = [Finding(OK if state == "RUNNING" else WARN, f"Windows service \"{name}\" is {state.lower()}",
                   "" if state == "RUNNING" else f"`guardproxy service start --name {name}`")]
    if not is_loopback_host(listen_host):
        rule = winservice.firewall_rule_name(name)
        if winservice.firewall_rule_exists(rule):
            out.append(Finding(OK, f"firewall rule \"{rule}\" exists"))
        else:
            out.append(Finding(WARN, f"no firewall rule \"{rule}\": other machines may not reach port {port}",
                               f"`netsh advfirewall firewall add rule name={rule} dir=in action=allow "
                               f"protocol=TCP localport={port}`"))
    return out


def check_systemd_unit(name: str, state: str | None) -> list[Finding]:
    """The unit's state as `systemctl show` gave it (ops/systemd.py); None: no unit installed."""
    if state is None:
        return [Finding(INFO, f"no systemd unit \"{name}\" installed",
                        "to start guardproxy on boot, see docs/linux-service.md "
                        "(packaging/systemd/guardproxy.service)")]
    if state == "active (running)":
        return [Finding(OK, f"systemd unit \"{name}\" is {state}")]
    fix = (f"`sudo systemctl start {name}`; if it stops again, `journalctl -u {name} -e` says why"
           if state.startswith(("inactive", "failed")) else f"`systemctl status {name}` and `journalctl -u {name} -e`")
    return [Finding(WARN, f"systemd unit \"{name}\" is {state}", fix)]


# --- all of it ------------------------------------------------------------------------------

def run_doctor(config_arg: str | None, environ: Mapping[str, str] | None = None, *,
               service_name: str = winservice.DEFAULT_NAME,
               table: list[listening.Listener] | None | bool = True) -> list[Finding]:
    """Every check; `table=True` reads the system's socket table (tests may pass their own)."""
    environ = os.environ if environ is None else environ
    windows = sys.platform == "win32"
    raw: dict[str, Any]
    try:
        path = existing_config(config_arg, environ, windows)
    except ConfigError as e:   # --config or $GUARDPROXY_CONFIG names a file that is not there
        path, config, raw, findings = None, None, {}, [Finding(FAIL, f"config: {e}")]
    else:
        config, raw, findings = check_config(path, environ, windows)
    unit = systemd.unit_state(service_name) if sys.platform.startswith("linux") else None
    if config is not None:
        findings += check_keys(config, raw)
        if config.path is not None:
            findings += check_file_mode(config.path, raw, service=unit is not None)
        hosts, listen = config.hosts(), (config.listen_host, config.listen_port)
        listed = bool(config.upstreams)
    else:
        # Fall back on what the file says, or the defaults, to check what still can be.
        hosts = hosts_in(raw)
        listed = isinstance(raw.get("upstreams"), list) and bool(raw["upstreams"])
        try:
            listen = parse_hostport(str(raw.get("listen", DEFAULT_LISTEN)))
        except ValueError:
            listen = parse_hostport(DEFAULT_LISTEN)
    findings += check_hosts(hosts, listening.listeners() if table is True else table or None, listed=listed)
    if config is not None and config.cluster is not None:
        findings += check_redis(config, environ)
    findings += check_listen_port(*listen)
    if path is not None:
        findings += check_tls(raw, path.resolve().parent)
    findings += check_open_files(max_connections=config.server.max_connections if config is not None
                                 else ServerLimits.max_connections)
    if windows:
        findings += check_windows_service(service_name, listen[0], listen[1])
    elif sys.platform.startswith("linux"):
        if unit is not None or systemd.has_systemd():
            findings += check_systemd_unit(service_name, unit)
    return findings


def add_parser(sub: Any) -> None:
    p = sub.add_parser("doctor", help="inspect the local set-up and say how to fix each problem",
                       description="Inspect the local set-up: config, keys, upstream, Ollama's exposure, "
                                   "listen port, TLS files, open-file limit, Windows service or systemd unit. "
                                   "Exit code 1 if a problem (FAIL) was found.")
    p.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
    p.add_argument("--name", default=winservice.DEFAULT_NAME,
                   help="the Windows service's or systemd unit's name (default: guardproxy)")
    p.set_defaults(func=cmd_doctor)


def cmd_doctor(args: argparse.Namespace) -> int:
    findings = run_doctor(args.config, service_name=args.name)
    for f in findings:
        print(f.line())
    problems = sum(f.level in (WARN, FAIL) for f in findings)
    print(f"\n{problems} problem{'s' if problems != 1 else ''} found" if problems else "\nno problems found")
    return 1 if any(f.level == FAIL for f in findings) else 0
