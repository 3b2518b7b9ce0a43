"""`guardproxy check URL --key KEY`: the verification checklist against a deployed gate.

Runs the checks a person would otherwise type as curl commands and prints a
pass/fail table:

    /health answers 200 without a key
    /ready answers 200 without a key: at least one upstream host is up
    /api/tags answers 401 without a key, and with a wrong key
    /api/tags answers 200 with the key
    a CORS preflight from --origin is allowed (only with --origin)
    a short streamed generation with --model: time to first token, tokens/s
    each host named with --upstream (an admin key): reachable, its version, its models

Standard library only (http.client), blocking, one connection per check, so
it runs anywhere Python or the one-file executable runs.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import secrets
import ssl
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import urlsplit

from ..wire.printable import printable
from ..config.model import url_host

DEFAULT_PROMPT = "Reply with one short sentence."
GENERATION_TOKENS = 24


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class Target:
    """Where the gate is: scheme, host, port, and a path prefix (for a gate behind a sub-path)."""
    scheme: str
    host: str
    port: int
    prefix: str

    @property
    def display(self) -> str:
        return f"{self.scheme}://{url_host(self.host)}:{self.port}{self.prefix}"


def parse_target(url: str) -> Target:
    """'http://gpu-box:11435' -> Target; raises ValueError with what was expected."""
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{url}: expected an http:// or https:// URL")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{url}: expected a port between 1 and 65535") from None
    if not parts.hostname:
        raise ValueError(f"{url}: expected a host name, e.g. http://gpu-box:11435")
    default = 443 if parts.scheme == "https" else 80
    return Target(parts.scheme, parts.hostname, port or default, parts.path.rstrip("/"))


def connection(target: Target, timeout: float, context: ssl.SSLContext | None = None) -> http.client.HTTPConnection:
    """A new, not yet opened connection to the gate; https:// with `context` (else the system's trust store)."""
    if target.scheme == "https":
        return http.client.HTTPSConnection(target.host, target.port, timeout=timeout,
                                           context=context or ssl.create_default_context())
    return http.client.HTTPConnection(target.host, target.port, timeout=timeout)


class _Client:
    """One fresh connection per request: a check must not depend on the previous one."""

    def __init__(self, target: Target, timeout: float, cafile: str | None) -> None:
        self.target = target
        self.timeout = timeout
        self.context: ssl.SSLContext | None = None
        if target.scheme == "https":
            self.context = ssl.create_default_context(cafile=cafile)

    def open(self, method: str, path: str, headers: Mapping[str, str], body: bytes | None = None,
             timeout: float | None = None) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        conn = connection(self.target, timeout or self.timeout, self.context)
        try:
            conn.request(method, self.target.prefix + path, body=body, headers=dict(headers))
            return conn, conn.getresponse()
        except BaseException:
            conn.close()
            raise

    def fetch(self, method: str, path: str, headers: Mapping[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        conn, resp = self.open(method, path, headers or {})
        try:
            body = resp.read(1 << 20)
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
        finally:
            conn.close()


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is guardproxy running, and the port forwarded?)"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted: {exc.verify_message} (use --cafile for a private CA)"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _body_error(body: bytes) -> str:
    try:
        msg = json.loads(body).get("error")
    except (ValueError, AttributeError):
        msg = None
    return f": {msg}" if isinstance(msg, str) else ""


def _expect_status(client: _Client, name: str, path: str, headers: Mapping[str, str] | None,
                   want: int, describe: Callable[[bytes], str] | None = None) -> CheckResult:
    try:
        status, _, body = client.fetch("GET", path, headers)
    except (OSError, http.client.HTTPException) as e:
        return CheckResult(name, False, _error_text(e))
    if status != want:
        return CheckResult(name, False, f"got {status}, expected {want}{_body_error(body)}")
    return CheckResult(name, True, f"{status}" + (f", {describe(body)}" if describe else ""))


def _hosts_up(body: bytes) -> str:
    try:
        n = json.loads(body)["upstreams_up"]
    except (ValueError, KeyError, TypeError):
        return "not a guardproxy /ready answer"
    return f"{n} upstream host{'s' if n != 1 else ''} up"


def _check_host(client: _Client, key: str, name: str) -> CheckResult:
    """One upstream host through the gate (X-Guardproxy-Upstream): its version and its models."""
    row = f"upstream {name}: version and models"
    headers = {"X-API-Key": key, "X-Guardproxy-Upstream": name}
    try:
        status, _, body = client.fetch("GET", "/api/version", headers)
        if status != 200:
            return CheckResult(row, False, f"got {status}{_body_error(body)}")
        version = json.loads(body).get("version", "?")
        status, _, body = client.fetch("GET", "/api/tags", headers)
        if status != 200:
            return CheckResult(row, False, f"Ollama {version}, but /api/tags got {status}{_body_error(body)}")
    except (OSError, http.client.HTTPException) as e:
        return CheckResult(row, False, _error_text(e))
    except (ValueError, AttributeError):
        return CheckResult(row, False, "not an Ollama answer")
    return CheckResult(row, True, f"Ollama {version}, {_count_models(body)}")


def _count_models(body: bytes) -> str:
    try:
        n = len(json.loads(body)['models'])
    except (ValueError, KeyError, TypeError):
        return "not an Ollama model list"
    return f"{n} model{'s' if n != 1 else ''}"


def judge_preflight(status: int, headers: Mapping[str, str], origin: str) -> tuple[bool, str]:
    """Whether a browser would accept this preflight answer for a request with X-API-Key."""
    h = {k.lower(): v for k, v in headers.items()}
    allow_origin = h.get("access-control-allow-origin")
    if not 200 <= status < 300:
        return False, f"got {status}, expected 200 or 204 with Access-Control-Allow-Origin"
    if allow_origin is None:
        return False, f"{status} but no Access-Control-Allow-Origin header"
    if allow_origin not in (origin, "*"):
        return False, f"Access-Control-Allow-Origin is {allow_origin!r}, not {origin!r}"
    allow_headers = {x.strip().lower() for x in h.get("access-control-allow-headers", "").split(",")}
    if not allow_headers & {"x-api-key", "*"}:
        return False, "Access-Control-Allow-Headers does not list X-API-Key"
    return True, f"{status}, origin allowed"


def _check_preflight(client: _Client, origin: str) -> CheckResult:
    name = f"CORS preflight from {origin}"
    headers = {"Origin": origin, "Access-Control-Request-Method": "POST",
               "Access-Control-Request-Headers": "content-type, x-api-key"}
    try:
        conn, resp = client.open("OPTIONS", "/api/chat", headers)
        try:
            resp.read(1 << 16)
            status, got = resp.status, {k.lower(): v for k, v in resp.getheaders()}
        finally:
            conn.close()
    except (OSError, http.client.HTTPException) as e:
        return CheckResult(name, False, _error_text(e))
    ok, detail = judge_preflight(status, got, origin)
    return CheckResult(name, ok, detail)


@dataclass
class StreamStats:
    tokens: int = 0
    first_token_s: float | None = None
    last_token_s: float | None = None
    done: bool = False

    @property
    def tokens_per_s(self) -> float | None:
        if self.tokens < 2 or self.first_token_s is None or self.last_token_s is None:
            return None
        span = self.last_token_s - self.first_token_s
        return (self.tokens - 1) / span if span > 0 else None


def read_ndjson_stream(lines: Any, clock: Callable[[], float], started: float) -> StreamStats:
    """Count token lines of an Ollama /api/generate stream as they arrive."""
    stats = StreamStats()
    for raw in lines:
        if not raw.strip():
            continue
        now = clock() - started
        obj = json.loads(raw)
        if not isinstance(obj, dict):
            raise ValueError("not an Ollama stream line")
        if "error" in obj:
            raise ValueError(f"error in stream: {obj['error']}")
        if obj.get("response"):
            stats.tokens += 1
            if stats.first_token_s is None:
                stats.first_token_s = now
            stats.last_token_s = now
        if obj.get("done"):
            stats.done = True
            break
    return stats


def _check_generation(client: _Client, key: str, model: str) -> CheckResult:
    name = f"streamed generation ({model})"
    body = json.dumps({"model": model, "prompt": DEFAULT_PROMPT, "stream": True,
                       "options": {"num_predict": GENERATION_TOKENS}}).encode()
    headers = {"X-API-Key": key, "Content-Type": "application/json"}
    started = time.perf_counter()
    try:
        # A cold model can take a while to load before its first token.
        conn, resp = client.open("POST", "/api/generate", headers, body, timeout=max(client.timeout, 120.0))
    except (OSError, http.client.HTTPException) as e:
        return CheckResult(name, False, _error_text(e))
    try:
        if resp.status != 200:
            return CheckResult(name, False, f"got {resp.status}{_body_error(resp.read(1 << 16))}")
        stats = read_ndjson_stream(iter(resp.readline, b""), time.perf_counter, started)
    except (OSError, http.client.HTTPException, ValueError) as e:
        return CheckResult(name, False, _error_text(e))
    finally:
        conn.close()
    if not stats.done:
        return CheckResult(name, False, f"stream ended after {stats.tokens} tokens without \"done\": true")
    if stats.first_token_s is None:
        return CheckResult(name, False, "stream finished without a single token")
    rate = stats.tokens_per_s
    rate_text = f"{rate:.1f} tokens/s" if rate is not None else "tokens/s n/a"
    return CheckResult(name, True, f"{stats.tokens} tokens, first after {stats.first_token_s * 1000:.0f} ms, {rate_text}")


def run_checks(url: str, key: str, *, origin: str | None = None, model: str | None = None,
               timeout: float = 15.0, cafile: str | None = None, upstreams: Sequence[str] = ()) -> list[CheckResult]:
    target = parse_target(url)
    client = _Client(target, timeout, cafile)
    wrong = "gp_" + secrets.token_urlsafe(32)  # a well-formed key that cannot be configured
    results = [
        _expect_status(client, "GET /health without a key -> 200", "/health", None, 200),
        _expect_status(client, "GET /ready without a key -> 200", "/ready", None, 200, _hosts_up),
        _expect_status(client, "GET /api/tags without a key -> 401", "/api/tags", None, 401),
        _expect_status(client, "GET /api/tags with a wrong key -> 401", "/api/tags", {"X-API-Key": wrong}, 401),
        _expect_status(client, "GET /api/tags with the key -> 200", "/api/tags", {"X-API-Key": key}, 200,
                       _count_models),
    ]
    if origin:
        results.append(_check_preflight(client, origin))
    if model:
        results.append(_check_generation(client, key, model))
    results += [_check_host(client, key, name) for name in upstreams]
    return results


def format_table(target: str, results: list[CheckResult]) -> str:
    width = max(len(r.name) for r in results)
    lines = [f"guardproxy check {printable(target)}", ""]
    for r in results:  # a detail may quote what the server answered
        lines.append(f"  {r.name.ljust(width)}  {'PASS' if r.ok else 'FAIL'}  {printable(r.detail)}")
    failed = sum(not r.ok for r in results)
    lines += ["", f"{len(results) - failed} passed, {failed} failed"]
    return "\n".join(lines)


# --- command line ---------------------------------------------------------------

def positive_seconds(text: str) -> float:
    """An argparse type for a duration in seconds: sockets and sleeps take nothing at or below zero."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0, e.g. 5 or 0.5, not {text!r}")
    return value


def add_parser(sub: Any) -> None:
    p = sub.add_parser("check", help="run the verification checklist against a running gate",
                       description="Run the verification checklist against a running guardproxy and "
                                   "print a pass/fail table. Exit code 1 if any check fails.")
    p.add_argument("url", metavar="URL", help="the gate, e.g. http://gpu-box:11435")
    p.add_argument("--key", required=True, help="an API key the gate accepts")
    p.add_argument("--origin", help="also check a CORS preflight from this browser origin")
    p.add_argument("--model", help="also stream a short generation from this model")
    p.add_argument("--timeout", type=positive_seconds, default=15.0, help="seconds per request (default 15)")
    p.add_argument("--cafile", metavar="FILE", help="trust this CA certificate for an https:// URL")
    p.add_argument("--upstream", metavar="NAME", action="append", default=[],
                   help="also check this upstream host through the gate (a name of [[upstreams]]; an admin "
                        "key; repeat for each host)")
    p.set_defaults(func=cmd_check)


def cmd_check(args: argparse.Namespace) -> int:
    import sys
    try:
        target = parse_target(args.url)
    except ValueError as e:
        print(f"guardproxy check: {printable(str(e))}", file=sys.stderr)
        return 2
    try:
        results = run_checks(args.url, args.key, origin=args.origin, model=args.model,
                             timeout=args.timeout, cafile=args.cafile, upstreams=args.upstream)
    except (OSError, ssl.SSLError) as e:  # e.g. an unreadable --cafile
        print(f"guardproxy check: {printable(_error_text(e))}", file=sys.stderr)
        return 2
    print(format_table(target.display, results))
    return 0 if all(r.ok for r in results) else 1
