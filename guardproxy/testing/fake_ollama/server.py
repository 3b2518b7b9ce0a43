"""The fake Ollama server: connections, request parsing with h11, dispatch, and `main`."""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import signal
import socket
import time
from http import HTTPStatus
from dataclasses import replace

import h11
import zstandard

from ...config.model import url_host
from ...engine.loop import LOOPS, loop_factory
from .checks import host_is_local, origin_is_local
from .exchange import BadRequest, Exchange, PeerGone, RecordedRequest
from .routes import route
from .shapes import dumps, listing_bodies, tagged

__all__ = ["FakeOllama", "RecordedRequest", "main"]

logger = logging.getLogger(__name__)

# Routes that load the model a JSON body names: a fake with its own model list answers 404 for others.
_MODEL_ROUTES = frozenset({
    "/api/generate", "/api/chat", "/api/embed", "/api/embeddings", "/api/show", "/v1/chat/completions",
    "/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/messages",
})
BUSY_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"


class FakeOllama:
    """A fake Ollama server; create it with ``await FakeOllama.start()``."""

    def __init__(self, *, token_delay: float = 0.0, default_tokens: int = 5, models: list[str] | None = None,
                 loaded: list[str] | None = None, busy: bool = False) -> None:
        self.token_delay = token_delay
        self.default_tokens = default_tokens
        # With `models`, /api/tags lists these and a generation for any other is a 404, as
        # Ollama's; `loaded` is what /api/ps shows.  Default: the three models of shapes.MODELS.
        self.models = None if models is None else {tagged(m) for m in models}
        self.tags_body, self.ps_body, self.v1_models_body = listing_bodies(models, loaded)
        # A fake Ollama whose queue is full: every model route answers 503 at once.
        self.busy = busy
        self.host = ""
        self.port = 0
        self.url = ""
        self.requests: list[RecordedRequest] = []
        self.connections_opened = 0
        self.open_connections = 0
        self.stream_aborted = asyncio.Event()
        self.aborted_at: float | None = None
        self.bytes_sent_last_stream = 0
        self.cloud_disabled = False  # what GET /api/status says
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._id_counter = 0
        self._closing = False

    @classmethod
    async def start(
        cls,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token_delay: float = 0.0,
        default_tokens: int = 5,
        models: list[str] | None = None,
        loaded: list[str] | None = None,
        busy: bool = False,
    ) -> FakeOllama:
        self = cls(token_delay=token_delay, default_tokens=default_tokens, models=models, loaded=loaded,
                   busy=busy)
        self._server = await asyncio.start_server(
            self._handle_connection, host, port, backlog=1024
        )
        self.host = host
        self.port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://{url_host(host)}:{self.port}"
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

    def next_id(self) -> int:
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
            ex = Exchange(self, reader, writer, record, event.http_version)
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
        body = dumps({"error": str(exc) or "bad request"})
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

    async def _dispatch(self, ex: Exchange) -> bool:
        """Run the handler; False means the connection must be dropped."""
        try:
            host = ex.request.header("host")
            origin = ex.request.header("origin")
            if (host is not None and not host_is_local(host)) or (
                origin is not None and not origin_is_local(origin)
            ):
                await ex.send_full(403, b"")
                return True
            if ex.request.header("content-encoding") == "zstd" and ex.path.startswith("/v1/"):
                # As Ollama's /v1 middleware: decompressed before the handler reads the JSON.
                body = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(ex.request.body)).read()
                ex.request = replace(ex.request, body=body)
            if ex.method == "POST" and ex.path in _MODEL_ROUTES and (self.busy or self.models is not None):
                if self.busy:
                    await ex.send_error(503, BUSY_MESSAGE)
                    return True
                missing = self._missing_model(ex)
                if missing is not None:
                    await ex.send_error(404, f'model "{missing}" not found, try pulling it first')
                    return True
            methods = route(ex.path)
            if methods is None:
                await ex.send_full(404, dumps({"error": "404 page not found"}))
                return True
            handler = methods.get(ex.method)
            if handler is None:
                await ex.send_full(
                    405,
                    dumps({"error": "405 method not allowed"}),
                    extra=[(b"Allow", ", ".join(methods).encode())],
                )
                return True
            await handler(ex)
            return True
        except BadRequest as exc:
            if ex.started:
                return False
            try:
                await ex.send_error(exc.status, str(exc))
            except (ConnectionError, RuntimeError):
                return False
            return True
        except PeerGone:
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


    def _missing_model(self, ex: Exchange) -> str | None:
        """The body's model when this fake does not have it (None: it has it, or the body names none)."""
        try:
            data = ex.request.json()
        except ValueError:
            return None
        name = data.get("model") or data.get("name") if isinstance(data, dict) else None
        if not isinstance(name, str) or not name or self.models is None or tagged(name) in self.models:
            return None
        return name


# -- command line -------------------------------------------------------

async def _run(host: str, port: int, token_delay: float, tokens: int, models: list[str] | None = None,
               loaded: list[str] | None = None) -> None:
    fake = await FakeOllama.start(
        host, port, token_delay=token_delay, default_tokens=tokens, models=models, loaded=loaded
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


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [n.strip() for n in text.split(",") if n.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m guardproxy.testing.fake_ollama",
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
    parser.add_argument("--loop", choices=LOOPS, default="auto")
    parser.add_argument("--models", help="comma-separated models /api/tags lists (others answer 404)")
    parser.add_argument("--loaded", help="comma-separated models /api/ps shows as loaded")
    args = parser.parse_args(argv)

    try:
        factory = loop_factory(args.loop)
    except RuntimeError as e:
        parser.error(str(e))

    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(_run(args.host, args.port, args.token_delay, args.tokens, _names(args.models),
                            _names(args.loaded)))
    except KeyboardInterrupt:
        pass
    return 0
