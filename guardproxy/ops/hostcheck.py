"""`guardproxy doctor` on the upstream hosts: each one answers as Ollama, lists its models, and (a local
one) does not listen where other machines reach it.

Blocking and standard library only.  Traffic goes to the configured hosts
alone; whether Ollama listens on 0.0.0.0 is read from the socket table.
"""

from __future__ import annotations

import http.client
import json
import sys
from typing import Any, Mapping

from . import listening
from ..config.model import DEFAULT_UPSTREAM, Upstream, UpstreamHost, url_host
from ..config.values import is_loopback_host, parse_upstream
from ..decisions.listing_reader import read_listing
from .finding import FAIL, INFO, OK, WARN, Finding


def check_hosts(hosts: tuple[UpstreamHost, ...], sockets: list[listening.Listener] | None,
                timeout: float = 5.0, *, listed: bool = False) -> list[Finding]:
    """Every check of every host; with several, each line says which host it is about.
    `listed`: the hosts are [[upstreams]] blocks, so a fix names the block, not `upstream`."""
    out: list[Finding] = []
    for host in hosts:
        label = f"{host.name}: " if len(hosts) > 1 else ""
        setting = f"the url of [[upstreams]] \"{host.name}\"" if listed else "`upstream` in the config"
        found = check_upstream(host.address, timeout, setting, others=listed and len(hosts) > 1)
        if found[0].level != FAIL:   # a host that did not answer as Ollama would only make the others wait too
            found += check_models(host.address, timeout) + check_cloud(host.address, timeout)
        found += check_exposure(host.address, sockets)
        out += [Finding(f.level, label + f.text, f.fix) for f in found]
    return out


def http_get(upstream: Upstream, path: str, limit: int, timeout: float) -> tuple[int, bytes]:
    """One GET on a fresh connection: the status and at most `limit` bytes of the body.

    Raises OSError or http.client.HTTPException when there is no answer.
    """
    conn = http.client.HTTPConnection(upstream.host, upstream.port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": upstream.authority})
        resp = conn.getresponse()
        return resp.status, resp.read(limit)
    finally:
        conn.close()


def guardproxy_answers(addr: str, port: int, timeout: float = 2.0) -> bool:
    """Whether a guardproxy listens on this port: its /health answers "OK".  Asked on the loopback
    side of the port (never a LAN address)."""
    local = "::1" if ":" in addr else "127.0.0.1"
    try:
        return http_get(Upstream(local, port), "/health", 16, timeout) == (200, b"OK")
    except (OSError, http.client.HTTPException):
        return False


def address_in_use(host: str, port: int) -> str:
    """What to tell someone whose `run` found its listen address taken: by a guardproxy, or by something else."""
    shown = f"{url_host(host)}:{port}"
    if guardproxy_answers(host, port):
        return (f"cannot listen on {shown}: a guardproxy is already running there (its /health answers); "
                f"stop that one first (`sudo systemctl stop guardproxy`, or Ctrl-C where it runs), or give this "
                f"one another port with --listen HOST:PORT or `listen` in the config")
    finder = (f"`netstat -ano | findstr :{port}`" if sys.platform == "win32"
              else f"`ss -ltnp 'sport = :{port}'` (or `lsof -i :{port}`)")
    return (f"cannot listen on {shown}: another program (not a guardproxy: no /health answer) is using it; "
            f"find it with {finder}, or choose another port with --listen HOST:PORT or `listen` in the config")


def check_upstream(upstream: Upstream, timeout: float = 5.0, setting: str = "`upstream` in the config", *,
                   others: bool = False) -> list[Finding]:
    """`setting` names where the address comes from, for the fix; `others`: other hosts take over meanwhile."""
    url = f"http://{upstream.authority}"
    meanwhile = "; until then requests go to the other hosts" if others else ""
    where = "on that host" if not is_loopback_host(upstream.host) else ""
    try:
        status, body = http_get(upstream, "/api/version", 65536, timeout)
    except ConnectionRefusedError:
        return [Finding(FAIL, f"nothing answers at {url}",
                        f"start Ollama{' ' + where if where else ''} (the Ollama app, `ollama serve` or "
                        f"`systemctl start ollama`), or correct {setting}{meanwhile}")]
    except TimeoutError:
        return [Finding(FAIL, f"{url} did not answer within {timeout:g}s",
                        f"check that Ollama{' ' + where if where else ''} is running and not stuck, and that "
                        f"{setting} is its address{meanwhile}")]
    except (OSError, http.client.HTTPException) as e:
        return [Finding(FAIL, f"cannot reach {url}: {getattr(e, 'strerror', None) or e}", f"check {setting}{meanwhile}")]
    if status == 403:
        return [Finding(FAIL, f"{url} answered 403 to its own address as Host",
                        f"point {setting} at Ollama by its loopback address, e.g. http://127.0.0.1:11434")]
    if status != 200:
        return [Finding(FAIL, f"{url}/api/version answered {status}: this does not look like Ollama",
                        f"set {setting} to Ollama's address, usually http://127.0.0.1:11434")]
    try:
        version = json.loads(body)["version"]
    except (ValueError, KeyError, TypeError):
        return [Finding(WARN, f"{url}/api/version answered 200 but without a version: is this Ollama?")]
    return [Finding(OK, f"upstream {url} is Ollama {version}")]


def check_models(upstream: Upstream, timeout: float = 5.0) -> list[Finding]:
    """The models the host's /api/tags lists (nothing when it does not answer: check_upstream says why)."""
    try:
        status, body = http_get(upstream, "/api/tags", 8 << 20, timeout)
    except (OSError, http.client.HTTPException):
        return []
    try:  # (a host's list is untrusted input: read within bounds, see decisions/listing_reader.py)
        names = [str(m.get("name") or m.get("model")) for m in read_listing(body)] if status == 200 else None
    except ValueError:
        names = None
    if names is None:
        return [Finding(WARN, f"http://{upstream.authority}/api/tags answered {status} without a model list")]
    if not names:
        return [Finding(INFO, f"upstream http://{upstream.authority} has no models yet",
                        "pull one: `ollama pull llama3.2` on that machine")]
    shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
    return [Finding(OK, f"upstream http://{upstream.authority} lists {len(names)} model"
                        f"{'s' if len(names) != 1 else ''}: {shown}")]


def check_cloud(upstream: Upstream, timeout: float = 5.0) -> list[Finding]:
    """Whether a local Ollama runs cloud models (GET /api/status, Ollama 0.12 and newer); loopback only."""
    if not is_loopback_host(upstream.host):
        return []
    try:
        status, body = http_get(upstream, "/api/status", 65536, timeout)
    except (OSError, http.client.HTTPException):
        return []  # check_upstream has said what is wrong with the connection
    try:
        cloud = json.loads(body)["cloud"] if status == 200 else None
        disabled = cloud["disabled"] if isinstance(cloud, dict) else None
    except (ValueError, KeyError, TypeError):
        disabled = None
    if not isinstance(disabled, bool):
        return [Finding(INFO, "Ollama does not say whether its cloud models are on (no /api/status: older "
                              "than 0.12?); guardproxy refuses cloud models to keys without `cloud = true`")]
    if disabled:
        source = cloud.get("source", "?") if isinstance(cloud, dict) else "?"
        return [Finding(OK, f"Ollama's cloud models are turned off (source: {source})")]
    return [Finding(INFO, "Ollama's cloud models are on: they run on the owner's ollama.com account; only admin keys "
                          "and keys with `cloud = true` may use them",
                    "to turn them off in Ollama itself, set OLLAMA_NO_CLOUD=1 for the Ollama server and restart it")]


def ollama_host_fix() -> str:
    if sys.platform == "win32":
        return ("bind Ollama to loopback: `setx OLLAMA_HOST 127.0.0.1 /M` in an Administrator prompt "
                "(or remove OLLAMA_HOST from the environment variables), then quit and restart Ollama")
    if sys.platform == "darwin":
        return "bind Ollama to loopback: `launchctl setenv OLLAMA_HOST 127.0.0.1`, then restart Ollama"
    return ("bind Ollama to loopback: `sudo systemctl edit ollama`, add [Service] "
            "Environment=\"OLLAMA_HOST=127.0.0.1\", then `sudo systemctl restart ollama` "
            "(in Docker: publish it as -p 127.0.0.1:11434:11434)")


def check_exposure(upstream: Upstream, table: list[listening.Listener] | None) -> list[Finding]:
    """Is the upstream's port open to other machines, bypassing the gate?"""
    if not is_loopback_host(upstream.host):
        return [Finding(INFO, f"upstream {upstream.authority} is another machine: make sure its port "
                              f"{upstream.port} accepts connections only from this one")]
    if table is None:
        return [Finding(INFO, "cannot read this system's table of listening sockets; "
                              f"check yourself that port {upstream.port} listens on 127.0.0.1 only")]
    found = listening.exposed(upstream.port, table)
    if found:
        where = ", ".join(sorted({entry.display for entry in found}))
        return [Finding(FAIL, f"Ollama listens on {where}: anyone on the LAN (or a router forwarding "
                              f"{upstream.port}) reaches it without a key", ollama_host_fix())]
    listens = any(e.port == upstream.port for e in table)
    return [Finding(OK, f"port {upstream.port} is not open to other machines"
                        + (" (it listens on loopback only)" if listens else ""))]


def hosts_in(raw: Mapping[str, Any]) -> tuple[UpstreamHost, ...]:
    """The hosts a config file that does not load names, as far as they can be read."""
    hosts = []
    entries = raw.get("upstreams")
    for i, entry in enumerate(entries if isinstance(entries, list) else []):  # a broken file: anything here
        if isinstance(entry, dict):
            try:
                hosts.append(UpstreamHost(str(entry.get("name") or f"upstreams[{i}]"),
                                          parse_upstream(str(entry.get("url")))))
            except ValueError:
                pass
    if hosts:
        return tuple(hosts)
    try:
        upstream = parse_upstream(str(raw.get("upstream", DEFAULT_UPSTREAM)))
    except ValueError:
        upstream = parse_upstream(DEFAULT_UPSTREAM)
    return (UpstreamHost(upstream.authority, upstream),)
