"""A fake Ollama HTTP/1.1 server for tests, demos and benchmarks.

It speaks the same wire shapes as a loopback-bound Ollama (NDJSON streams,
OpenAI-compatible SSE, the Host/Origin checks) but generates deterministic
tokens (" tok0", " tok1", ...) instantly or at a configurable pace.

Requests are parsed with h11, but responses are written as raw bytes so the
exact framing is under our control: every NDJSON line / SSE event is its own
HTTP chunk, handed to the transport and drained on its own.  That lets the
test-suite observe whether the proxy in front of us coalesces or buffers.

Run standalone with::

    python -m guardproxy.fake_ollama --host 127.0.0.1 --port 11434
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import ipaddress
import json
import logging
import signal
import socket
import sys
import time
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qs

import h11

__all__ = ["FakeOllama", "RecordedRequest", "main"]

logger = logging.getLogger(__name__)

VERSION = "0.12.0"
PROMPT_TOKENS = 26

_MODELS: list[tuple[str, str, int, str, str]] = [
    # name, family, size, parameter_size, quantization
    ("llama3.2:latest", "llama", 2019393189, "3.2B", "Q4_K_M"),
    ("qwen3:8b", "qwen3", 5225388164, "8.2B", "Q4_K_M"),
    ("mistral:7b", "llama", 4113301824, "7.2B", "Q4_0"),
]

_BLOB_PATTERN = b"0123456789abcdef"
_EMBED_VALUES = [f"{(i * 0.0617) % 1:.7f}".encode() for i in range(1, 17)]
_EMBED_DEFAULT_DIMS = 16
# Each value is exactly 9 characters plus a comma, so a target byte size maps
# directly onto a number of dimensions.
_EMBED_ITEM_BYTES = 10

# Yield to the event loop every so often when generating without a delay;
# drain() does not suspend unless the transport is paused, and one huge
# stream must not starve every other connection during a benchmark.
_YIELD_EVERY = 16


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as received, recorded once its body was complete."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        """First value of header *name* (case-insensitive), or None."""
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def json(self) -> Any:
        return json.loads(self.body)


class _PeerGone(Exception):
    """The client went away while we still had things to send."""


class _BadRequest(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


# --------------------------------------------------------------------------
# Small cached formatters: they run once per token in benchmarks.

_ts_cache_sec = -1
_ts_cache_prefix = ""


def _rfc3339_now() -> bytes:
    """Current UTC wall-clock time as RFC3339 with microseconds."""
    global _ts_cache_sec, _ts_cache_prefix
    now = time.time()
    sec = int(now)
    if sec != _ts_cache_sec:
        _ts_cache_prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        _ts_cache_sec = sec
    return b"%s.%06dZ" % (_ts_cache_prefix.encode(), int((now - sec) * 1e6))


_date_cache_sec = -1
_date_cache_value = b""


def _http_date() -> bytes:
    global _date_cache_sec, _date_cache_value
    sec = int(time.time())
    if sec != _date_cache_sec:
        _date_cache_value = formatdate(sec, usegmt=True).encode()
        _date_cache_sec = sec
    return _date_cache_value


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


# --------------------------------------------------------------------------
# Loopback protection, mirroring what Ollama does when bound to loopback.

_LOCAL_ORIGIN_HOSTS = frozenset({"localhost", "127.0.0.1", "0.0.0.0"})
_ANY_HOST_ORIGIN_SCHEMES = frozenset({"app", "file", "tauri"})


def _host_is_local(host_header: str) -> bool:
    value = host_header.strip()
    if not value:
        return True
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return False
        host = value[1:end]
    elif value.count(":") == 1:
        host = value.split(":", 1)[0]
    else:
        # Either no port, or a bare IPv6 literal that cannot carry one.
        host = value
    host = host.lower()
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_unspecified


def _origin_is_local(origin: str) -> bool:
    scheme, sep, rest = origin.strip().partition("://")
    if not sep:
        return False
    scheme = scheme.lower()
    if scheme in _ANY_HOST_ORIGIN_SCHEMES:
        return True
    if scheme not in ("http", "https"):
        return False
    authority = rest.split("/", 1)[0]
    if "@" in authority:
        return False
    host, _, port = authority.partition(":")
    if port and not port.isdigit():
        return False
    return host.lower() in _LOCAL_ORIGIN_HOSTS


# --------------------------------------------------------------------------
# Body helpers


def _parse_json_body(body: bytes) -> dict[str, Any]:
    if not body.strip():
        raise _BadRequest("missing request body")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _BadRequest(f"invalid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise _BadRequest("request body must be a JSON object")
    return data


def _opt_bool(data: dict[str, Any], key: str, default: bool) -> bool:
    value = data.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _BadRequest(f"{key} must be a boolean")
    return value


def _opt_number(data: dict[str, Any], key: str, default: float) -> float:
    value = data.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise _BadRequest(f"{key} must be a non-negative number")
    return float(value)


def _opt_count(value: Any, name: str, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _BadRequest(f"{name} must be an integer")
    # Ollama treats negative num_predict as "until done"; here that means default.
    return int(value) if value >= 0 else default


def _require_model(data: dict[str, Any]) -> str:
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise _BadRequest("model is required")
    return model


def _digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def _details(family: str, parameter_size: str, quant: str) -> dict[str, Any]:
    return {
        "parent_model": "",
        "format": "gguf",
        "family": family,
        "families": [family],
        "parameter_size": parameter_size,
        "quantization_level": quant,
    }


def _build_tags() -> bytes:
    models = [
        {
            "name": name,
            "model": name,
            "modified_at": "2025-05-01T10:00:00.000000Z",
            "size": size,
            "digest": _digest(name),
            "details": _details(family, psize, quant),
        }
        for name, family, size, psize, quant in _MODELS
    ]
    return _dumps({"models": models})


def _build_ps() -> bytes:
    name, family, size, psize, quant = _MODELS[0]
    model = {
        "name": name,
        "model": name,
        "size": size + 700_000_000,
        "digest": _digest(name),
        "details": _details(family, psize, quant),
        "expires_at": "2099-01-01T00:00:00.000000Z",
        "size_vram": size + 700_000_000,
        "context_length": 4096,
    }
    return _dumps({"models": [model]})


def _build_openai_models() -> bytes:
    data = [
        {"id": name, "object": "model", "created": 0, "owned_by": "library"}
        for name, *_ in _MODELS
    ]
    return _dumps({"object": "list", "data": data})


_TAGS_BODY = _build_tags()
_PS_BODY = _build_ps()
_V1_MODELS_BODY = _build_openai_models()
_VERSION_BODY = _dumps({"version": VERSION})


# --------------------------------------------------------------------------
# One request/response exchange on a connection.


class _Exchange:
    """Writes one raw HTTP/1.1 response for one parsed request."""

    __slots__ = (
        "fake",
        "reader",
        "writer",
        "method",
        "path",
        "query",
        "request",
        "keep_alive",
        "chunked",
        "streaming",
        "started",
        "_pending_head",
    )

    def __init__(
        self,
        fake: FakeOllama,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        request: RecordedRequest,
        http_version: bytes,
    ) -> None:
        self.fake = fake
        self.reader = reader
        self.writer = writer
        self.request = request
        self.method = request.method
        path, _, query = request.target.partition("?")
        self.path = path
        self.query = query
        conn_tokens = {
            t.strip().lower()
            for k, v in request.headers
            if k == "connection"
            for t in v.split(",")
        }
        self.keep_alive = http_version != b"1.0" and "close" not in conn_tokens
        # HTTP/1.0 peers cannot decode chunked framing; stream raw and close.
        self.chunked = http_version != b"1.0"
        self.streaming = False
        self.started = False
        self._pending_head = b""

    def _head(
        self, status: int, headers: list[tuple[bytes, bytes]]
    ) -> bytes:
        parts = [b"HTTP/1.1 %d %s\r\n" % (status, HTTPStatus(status).phrase.encode())]
        for name, value in headers:
            parts.append(b"%s: %s\r\n" % (name, value))
        parts.append(b"Date: %s\r\n" % _http_date())
        if not self.keep_alive:
            parts.append(b"Connection: close\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)

    async def send_full(
        self,
        status: int,
        body: bytes,
        content_type: bytes = b"application/json; charset=utf-8",
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        headers = [(b"Content-Type", content_type)] if body or status != 403 else []
        headers.append((b"Content-Length", b"%d" % len(body)))
        if extra:
            headers.extend(extra)
        self.started = True
        head = self._head(status, headers)
        self.writer.write(head if self.method == "HEAD" else head + body)
        await self.writer.drain()

    async def send_json(self, status: int, obj: Any) -> None:
        await self.send_full(status, _dumps(obj))

    async def send_error(self, status: int, message: str) -> None:
        if self.path.startswith("/v1/"):
            err: dict[str, Any] = {
                "error": {
                    "message": message,
                    "type": "invalid_request_error" if status < 500 else "api_error",
                    "param": None,
                    "code": None,
                }
            }
        else:
            err = {"error": message}
        await self.send_json(status, err)

    # -- streaming ---------------------------------------------------------

    def begin_stream(
        self, content_type: bytes, content_length: int | None = None
    ) -> None:
        """Prepare a streamed response; the head goes out with the first chunk.

        Holding the head back matches Ollama, whose headers only reach the
        wire together with the first generated line.
        """
        headers = [(b"Content-Type", content_type)]
        if content_length is not None:
            headers.append((b"Content-Length", b"%d" % content_length))
            self.chunked = False
        elif self.chunked:
            headers.append((b"Transfer-Encoding", b"chunked"))
        else:
            self.keep_alive = False
        if content_type == b"text/event-stream":
            headers.append((b"Cache-Control", b"no-cache"))
        self._pending_head = self._head(200, headers)
        self.streaming = True
        self.started = True
        self.fake.bytes_sent_last_stream = 0

    def _check_peer(self) -> None:
        if self.writer.transport.is_closing() or self.reader.at_eof():
            raise _PeerGone()

    async def stream_chunk(self, payload: bytes) -> None:
        self._check_peer()
        if self.chunked:
            frame = b"%x\r\n%b\r\n" % (len(payload), payload)
        else:
            frame = payload
        if self._pending_head:
            frame = self._pending_head + frame
            self._pending_head = b""
        try:
            self.writer.write(frame)
            self.fake.bytes_sent_last_stream += len(payload)
            await self.writer.drain()
        except (ConnectionError, RuntimeError) as exc:
            raise _PeerGone() from exc

    async def end_stream(self) -> None:
        self._check_peer()
        tail = b"0\r\n\r\n" if self.chunked else b""
        data = self._pending_head + tail
        self._pending_head = b""
        if not data:
            return
        try:
            self.writer.write(data)
            await self.writer.drain()
        except (ConnectionError, RuntimeError) as exc:
            raise _PeerGone() from exc


_Handler = Callable[[_Exchange], Awaitable[None]]


# --------------------------------------------------------------------------


class FakeOllama:
    """A fake Ollama server; create it with ``await FakeOllama.start()``."""

    def __init__(self, *, token_delay: float = 0.0, default_tokens: int = 5) -> None:
        self.token_delay = token_delay
        self.default_tokens = default_tokens
        self.host = ""
        self.port = 0
        self.url = ""
        self.requests: list[RecordedRequest] = []
        self.connections_opened = 0
        self.open_connections = 0
        self.stream_aborted = asyncio.Event()
        self.aborted_at: float | None = None
        self.bytes_sent_last_stream = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._id_counter = 0
        self._closing = False
        self._embed_cache: dict[int, bytes] = {}
        self._routes: dict[str, dict[str, _Handler]] = {
            "/": {"GET": self._h_root, "HEAD": self._h_root},
            "/api/version": {"GET": self._h_version, "HEAD": self._h_version},
            "/api/tags": {"GET": self._h_tags, "HEAD": self._h_tags},
            "/api/ps": {"GET": self._h_ps, "HEAD": self._h_ps},
            "/v1/models": {"GET": self._h_v1_models, "HEAD": self._h_v1_models},
            "/api/generate": {"POST": self._h_generate},
            "/api/chat": {"POST": self._h_chat},
            "/api/embed": {"POST": self._h_embed},
            "/api/pull": {"POST": self._h_pull},
            "/v1/chat/completions": {"POST": self._h_v1_chat},
            "/v1/completions": {"POST": self._h_v1_completions},
            "/fake/blob": {"GET": self._h_blob},
        }

    @classmethod
    async def start(
        cls,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token_delay: float = 0.0,
        default_tokens: int = 5,
    ) -> FakeOllama:
        self = cls(token_delay=token_delay, default_tokens=default_tokens)
        self._server = await asyncio.start_server(
            self._handle_connection, host, port, backlog=1024
        )
        self.host = host
        self.port = self._server.sockets[0].getsockname()[1]
        url_host = f"[{host}]" if ":" in host else host
        self.url = f"http://{url_host}:{self.port}"
        return self

    async def close(self) -> None:
        """Stop accepting and drop every open connection."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            # abort(), not close(): a peer that stopped reading would
            # otherwise keep the connection alive until its buffer drains.
            writer.transport.abort()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> FakeOllama:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _next_id(self) -> int:
        self._id_counter += 1
        return self._id_counter

    # -- connection handling ----------------------------------------------

    async def _handle_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections_opened += 1
        self.open_connections += 1
        sock = writer.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        graceful = True
        try:
            graceful = await self._serve(reader, writer)
        except asyncio.CancelledError:
            graceful = False
            if not self._closing:
                raise
            # Cancelled by close(): end quietly, because on 3.11 asyncio
            # reports a cancelled connection task as an unhandled error.
        except Exception:
            graceful = False
            logger.exception("fake ollama: connection handler failed")
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)
            self.open_connections -= 1
            if graceful:
                writer.close()
            else:
                writer.transport.abort()

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Serve requests until the connection should end.

        Returns False when the connection must be torn down abruptly.
        """
        conn = h11.Connection(h11.SERVER)
        while True:
            try:
                parsed = await self._read_request(conn, reader, writer)
            except h11.RemoteProtocolError as exc:
                await self._reply_protocol_error(writer, exc)
                return True
            except ConnectionError:
                return False
            if parsed is None:
                return True
            event, body = parsed
            record = RecordedRequest(
                method=event.method.decode("ascii"),
                target=event.target.decode("ascii", "replace"),
                headers=[
                    (k.decode("latin-1"), v.decode("latin-1"))
                    for k, v in event.headers
                ],
                body=body,
            )
            self.requests.append(record)
            ex = _Exchange(self, reader, writer, record, event.http_version)
            if not await self._dispatch(ex):
                return False
            if not ex.keep_alive:
                return True
            # A fresh parser per request: responses bypass h11, so its
            # state machine would never reach DONE on our side.  Bytes that
            # were already read (pipelining) carry over.
            leftover, closed = conn.trailing_data
            conn = h11.Connection(h11.SERVER)
            if leftover:
                conn.receive_data(leftover)
            if closed:
                conn.receive_data(b"")

    async def _read_request(
        self,
        conn: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> tuple[h11.Request, bytes] | None:
        request: h11.Request | None = None
        body = bytearray()
        sent_continue = False
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                if (
                    request is not None
                    and not sent_continue
                    and conn.they_are_waiting_for_100_continue
                ):
                    sent_continue = True
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                    await writer.drain()
                conn.receive_data(await reader.read(65536))
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                return request, bytes(body)
            elif isinstance(event, h11.ConnectionClosed):
                return None
            elif event is h11.PAUSED:  # pragma: no cover - cannot happen here
                return None

    async def _reply_protocol_error(
        self, writer: asyncio.StreamWriter, exc: h11.RemoteProtocolError
    ) -> None:
        status = exc.error_status_hint or 400
        body = _dumps({"error": str(exc) or "bad request"})
        head = (
            b"HTTP/1.1 %d %s\r\nContent-Type: application/json; charset=utf-8\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n"
            % (status, HTTPStatus(status).phrase.encode(), len(body))
        )
        try:
            writer.write(head + body)
            await writer.drain()
        except ConnectionError:
            pass

    async def _dispatch(self, ex: _Exchange) -> bool:
        """Run the handler; False means the connection must be dropped."""
        try:
            host = ex.request.header("host")
            origin = ex.request.header("origin")
            if (host is not None and not _host_is_local(host)) or (
                origin is not None and not _origin_is_local(origin)
            ):
                await ex.send_full(403, b"")
                return True
            methods = self._routes.get(ex.path)
            if methods is None:
                await ex.send_full(404, _dumps({"error": "404 page not found"}))
                return True
            handler = methods.get(ex.method)
            if handler is None:
                await ex.send_full(
                    405,
                    _dumps({"error": "405 method not allowed"}),
                    extra=[(b"Allow", ", ".join(methods).encode())],
                )
                return True
            await handler(ex)
            return True
        except _BadRequest as exc:
            if ex.started:
                return False
            try:
                await ex.send_error(exc.status, str(exc))
            except (ConnectionError, RuntimeError):
                return False
            return True
        except _PeerGone:
            if ex.streaming:
                self.aborted_at = time.monotonic()
                self.stream_aborted.set()
            return False
        except (ConnectionError, RuntimeError):
            return False
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("fake ollama: handler for %s %s failed", ex.method, ex.path)
            if ex.started:
                return False
            try:
                await ex.send_error(500, "internal error in fake server")
            except (ConnectionError, RuntimeError):
                return False
            return True

    # -- simple endpoints --------------------------------------------------

    async def _h_root(self, ex: _Exchange) -> None:
        await ex.send_full(200, b"Ollama is running", b"text/plain; charset=utf-8")

    async def _h_version(self, ex: _Exchange) -> None:
        await ex.send_full(200, _VERSION_BODY)

    async def _h_tags(self, ex: _Exchange) -> None:
        await ex.send_full(200, _TAGS_BODY)

    async def _h_ps(self, ex: _Exchange) -> None:
        await ex.send_full(200, _PS_BODY)

    async def _h_v1_models(self, ex: _Exchange) -> None:
        await ex.send_full(200, _V1_MODELS_BODY)

    # -- generation --------------------------------------------------------

    def _gen_params(
        self, data: dict[str, Any], count: Any, count_name: str
    ) -> tuple[int, float]:
        n = _opt_count(count, count_name, self.default_tokens)
        delay = _opt_number(data, "fake_delay", self.token_delay)
        return n, delay

    async def _h_generate(self, ex: _Exchange) -> None:
        await self._ollama_generation(ex, chat=False)

    async def _h_chat(self, ex: _Exchange) -> None:
        await self._ollama_generation(ex, chat=True)

    async def _ollama_generation(self, ex: _Exchange, *, chat: bool) -> None:
        data = _parse_json_body(ex.request.body)
        model = _require_model(data)
        if chat:
            messages = data.get("messages", [])
            if messages is not None and not isinstance(messages, list):
                raise _BadRequest("messages must be an array")
        options = data.get("options") or {}
        if not isinstance(options, dict):
            raise _BadRequest("options must be an object")
        n, delay = self._gen_params(data, options.get("num_predict"), "num_predict")
        stream = _opt_bool(data, "stream", True)
        started = time.perf_counter_ns()
        model_json = _dumps(model)

        def final_fields(text: str) -> dict[str, Any]:
            elapsed = max(1, time.perf_counter_ns() - started)
            out: dict[str, Any] = {
                "model": model,
                "created_at": _rfc3339_now().decode(),
            }
            if chat:
                out["message"] = {"role": "assistant", "content": text}
            else:
                out["response"] = text
            out.update(
                done=True,
                done_reason="stop",
                total_duration=elapsed,
                load_duration=1,
                prompt_eval_count=PROMPT_TOKENS,
                prompt_eval_duration=1,
                eval_count=n,
                eval_duration=elapsed,
            )
            return out

        if not stream:
            if delay > 0 and n > 0:
                await asyncio.sleep(delay * n)
            text = "".join(f" tok{i}" for i in range(n))
            await ex.send_json(200, final_fields(text))
            return

        head = b'{"model":' + model_json + b',"created_at":"'
        if chat:
            mid = b'","message":{"role":"assistant","content":" tok'
            tail = b'"},"done":false}\n'
        else:
            mid = b'","response":" tok'
            tail = b'","done":false}\n'
        ex.begin_stream(b"application/x-ndjson")
        for i in range(n):
            if delay > 0:
                await asyncio.sleep(delay)
            elif i % _YIELD_EVERY == _YIELD_EVERY - 1:
                await asyncio.sleep(0)
            await ex.stream_chunk(b"%b%b%b%d%b" % (head, _rfc3339_now(), mid, i, tail))
        await ex.stream_chunk(_dumps(final_fields("")) + b"\n")
        await ex.end_stream()

    async def _h_v1_chat(self, ex: _Exchange) -> None:
        await self._openai_generation(ex, chat=True)

    async def _h_v1_completions(self, ex: _Exchange) -> None:
        await self._openai_generation(ex, chat=False)

    async def _openai_generation(self, ex: _Exchange, *, chat: bool) -> None:
        data = _parse_json_body(ex.request.body)
        model = _require_model(data)
        if chat and not isinstance(data.get("messages"), list):
            raise _BadRequest("messages is required")
        count = data.get("max_completion_tokens")
        if count is None:
            count = data.get("max_tokens")
        n, delay = self._gen_params(data, count, "max_tokens")
        stream = _opt_bool(data, "stream", False)
        stream_options = data.get("stream_options") or {}
        include_usage = isinstance(stream_options, dict) and bool(
            stream_options.get("include_usage")
        )
        seq = self._next_id()
        ident = f"chatcmpl-{seq}" if chat else f"cmpl-{seq}"
        created = int(time.time())
        usage = {
            "prompt_tokens": PROMPT_TOKENS,
            "completion_tokens": n,
            "total_tokens": PROMPT_TOKENS + n,
        }
        obj_kind = "chat.completion" if chat else "text_completion"

        if not stream:
            if delay > 0 and n > 0:
                await asyncio.sleep(delay * n)
            text = "".join(f" tok{i}" for i in range(n))
            choice: dict[str, Any] = (
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
                if chat
                else {"text": text, "index": 0, "finish_reason": "stop"}
            )
            await ex.send_json(
                200,
                {
                    "id": ident,
                    "object": obj_kind,
                    "created": created,
                    "model": model,
                    "system_fingerprint": "fp_ollama",
                    "choices": [choice],
                    "usage": usage,
                },
            )
            return

        chunk_kind = "chat.completion.chunk" if chat else "text_completion"
        envelope = {
            "id": ident,
            "object": chunk_kind,
            "created": created,
            "model": model,
            "system_fingerprint": "fp_ollama",
        }
        # Everything up to the token number is constant for the stream.
        env_json = _dumps(envelope)[:-1]
        if chat:
            head = b"data: " + env_json + (
                b',"choices":[{"index":0,"delta":{"role":"assistant","content":" tok'
            )
            tail = b'"},"finish_reason":null}]}\n\n'
            last_choice: dict[str, Any] = {
                "index": 0,
                "delta": {"role": "assistant", "content": ""},
                "finish_reason": "stop",
            }
        else:
            head = b"data: " + env_json + b',"choices":[{"text":" tok'
            tail = b'","index":0,"finish_reason":null}]}\n\n'
            last_choice = {"text": "", "index": 0, "finish_reason": "stop"}

        ex.begin_stream(b"text/event-stream")
        for i in range(n):
            if delay > 0:
                await asyncio.sleep(delay)
            elif i % _YIELD_EVERY == _YIELD_EVERY - 1:
                await asyncio.sleep(0)
            await ex.stream_chunk(b"%b%d%b" % (head, i, tail))
        await ex.stream_chunk(
            b"data: " + _dumps({**envelope, "choices": [last_choice]}) + b"\n\n"
        )
        if include_usage:
            await ex.stream_chunk(
                b"data: " + _dumps({**envelope, "choices": [], "usage": usage}) + b"\n\n"
            )
        await ex.stream_chunk(b"data: [DONE]\n\n")
        await ex.end_stream()

    # -- embeddings --------------------------------------------------------

    def _embedding_json(self, dims: int) -> bytes:
        cached = self._embed_cache.get(dims)
        if cached is None:
            values = _EMBED_VALUES
            cached = b"[" + b",".join(values[i % 16] for i in range(dims)) + b"]"
            if len(self._embed_cache) > 32:
                self._embed_cache.clear()
            self._embed_cache[dims] = cached
        return cached

    async def _h_embed(self, ex: _Exchange) -> None:
        data = _parse_json_body(ex.request.body)
        model = _require_model(data)
        raw_input = data.get("input", "")
        if isinstance(raw_input, str):
            inputs = 1
        elif isinstance(raw_input, list) and all(isinstance(x, str) for x in raw_input):
            inputs = max(1, len(raw_input))
        else:
            raise _BadRequest("invalid input type")
        fake_size = data.get("fake_size")
        if fake_size is None:
            dims = _EMBED_DEFAULT_DIMS
        else:
            size = _opt_count(fake_size, "fake_size", 0)
            dims = max(1, size // (_EMBED_ITEM_BYTES * inputs))
        vector = self._embedding_json(dims)
        body = b"".join(
            [
                b'{"model":',
                _dumps(model),
                b',"embeddings":[',
                b",".join([vector] * inputs),
                b'],"total_duration":1000,"load_duration":1,"prompt_eval_count":%d}'
                % (PROMPT_TOKENS * inputs),
            ]
        )
        await ex.send_full(200, body)

    # -- pull --------------------------------------------------------------

    async def _h_pull(self, ex: _Exchange) -> None:
        data = _parse_json_body(ex.request.body)
        name = data.get("model") or data.get("name")
        if not isinstance(name, str) or not name:
            raise _BadRequest("model is required")
        stream = _opt_bool(data, "stream", True)
        delay = _opt_number(data, "fake_delay", self.token_delay)
        if not stream:
            if delay > 0:
                await asyncio.sleep(delay * 4)
            await ex.send_json(200, {"status": "success"})
            return
        digest = "sha256:" + _digest(name)
        total = 2_019_393_189
        lines: list[dict[str, Any]] = [{"status": "pulling manifest"}]
        for part in range(5):
            lines.append(
                {
                    "status": f"pulling {digest[7:19]}",
                    "digest": digest,
                    "total": total,
                    "completed": total * part // 4,
                }
            )
        lines += [
            {"status": "verifying sha256 digest"},
            {"status": "writing manifest"},
            {"status": "success"},
        ]
        ex.begin_stream(b"application/x-ndjson")
        for line in lines:
            if delay > 0:
                await asyncio.sleep(delay)
            await ex.stream_chunk(_dumps(line) + b"\n")
        await ex.end_stream()

    # -- bulk data ---------------------------------------------------------

    async def _h_blob(self, ex: _Exchange) -> None:
        params = parse_qs(ex.query)

        def int_param(name: str, default: int, minimum: int) -> int:
            values = params.get(name)
            if not values:
                return default
            try:
                value = int(values[-1])
            except ValueError:
                raise _BadRequest(f"{name} must be an integer") from None
            if value < minimum:
                raise _BadRequest(f"{name} must be >= {minimum}")
            return value

        size = int_param("size", 1 << 20, 0)
        chunk = int_param("chunk", 65536, 1)
        framing = (params.get("framing") or ["chunked"])[-1]
        if framing not in ("chunked", "length"):
            raise _BadRequest("framing must be 'chunked' or 'length'")
        pattern_len = len(_BLOB_PATTERN)
        buf = _BLOB_PATTERN * (chunk // pattern_len + 2)
        view = memoryview(buf)
        ex.begin_stream(
            b"application/octet-stream",
            content_length=size if framing == "length" else None,
        )
        sent = 0
        while sent < size:
            n = min(chunk, size - sent)
            start = sent % pattern_len
            await ex.stream_chunk(bytes(view[start : start + n]))
            sent += n
        await ex.end_stream()


# --------------------------------------------------------------------------
# Command line


async def _run(host: str, port: int, token_delay: float, tokens: int) -> None:
    fake = await FakeOllama.start(
        host, port, token_delay=token_delay, default_tokens=tokens
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError, ValueError):
            # Windows has no loop signal handlers; Ctrl+C then arrives as
            # KeyboardInterrupt in main().
            pass
    print(f"fake Ollama listening on {fake.url}", flush=True)
    try:
        await stop.wait()
    finally:
        await fake.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m guardproxy.fake_ollama",
        description="Run a fake Ollama server for tests and benchmarks.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11434)
    parser.add_argument(
        "--token-delay", type=float, default=0.0, help="seconds between tokens"
    )
    parser.add_argument(
        "--tokens", type=int, default=5, help="tokens per response by default"
    )
    parser.add_argument(
        "--loop", choices=("auto", "asyncio", "uvloop"), default="auto"
    )
    args = parser.parse_args(argv)

    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if args.loop != "asyncio" and sys.platform != "win32":
        try:
            import uvloop
        except ImportError:
            if args.loop == "uvloop":
                parser.error("uvloop is not installed")
        else:
            loop_factory = uvloop.new_event_loop
    elif args.loop == "uvloop":
        parser.error("uvloop is not available on this platform")

    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(_run(args.host, args.port, args.token_delay, args.tokens))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
