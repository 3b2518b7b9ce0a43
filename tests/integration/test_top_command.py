"""`python -m guardproxy top` against a literal /metrics served on loopback: piped, and under a pseudo-terminal."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import pytest

from conftest import start_proxy
from guardproxy import __version__
from guardproxy.config.model import KeyEntry
from guardproxy.config.write import hash_key
from guardproxy.testing.fake_ollama import FakeOllama
from support.ports import free_port
from support.raw_http import fetch, read_response, request_bytes
from support.terminals import open_terminal, read_until
from support.topmetrics import metrics_text

ROOT = Path(__file__).resolve().parents[2]
KEY = "gp_top-test-key-0123456789abcdefghijklmnopq"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class MetricsServer:
    """Serves scrape n of `metrics_text` to the n-th GET /metrics (or a fixed failure), and records each request head."""

    def __init__(self, status: int = 200, body: str | None = None) -> None:
        self.status, self.body = status, body
        self.heads: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.url = ""

    async def __aenter__(self) -> MetricsServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            self.heads.append(head)
            body = (self.body if self.body is not None else metrics_text(len(self.heads) - 1, upstream_b_up=False)).encode()
            writer.write(b"HTTP/1.1 %d X\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: %d\r\n"
                         b"Connection: close\r\n\r\n%s" % (self.status, len(body), body))
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            pass
        finally:
            writer.close()


def env(**extra: str) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k not in ("GUARDPROXY_API_KEY", "COLUMNS", "LINES")}
    e.update(extra)
    return e


async def run_piped(*args: str, **environ: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "guardproxy", "top", *args, cwd=ROOT,
                                                env=env(**environ), stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    # (Windows' text streams end lines with CRLF)
    return proc.returncode, out.decode().replace("\r\n", "\n"), err.decode().replace("\r\n", "\n")


async def test_piped_it_prints_one_snapshot_with_rates_and_exits() -> None:
    async with MetricsServer() as server:
        code, out, err = await run_piped(server.url, "--interval", "0.5", COLUMNS="100", GUARDPROXY_API_KEY=KEY)
    assert (code, err) == (0, "")
    assert len(server.heads) == 2  # two scrapes, so that the one snapshot has rates
    assert all(h.startswith(b"GET /metrics HTTP/1.1\r\n") for h in server.heads)
    assert all(f"\r\nAuthorization: Bearer {KEY}\r\n".encode() in h for h in server.heads)
    assert "\x1b" not in out  # no screen control when the output is not a terminal
    assert out.startswith(f"guardproxy 0.1.0 {server.url}/metrics\nconnections 17  streams 5  queue 4  requests/s ")
    rows = {line.split()[0]: line.split()[1:] for line in out.split("TOKENS/S\n")[1].split("\n\n")[0].splitlines()}
    # 800 completion tokens were added between scrapes that began at least 0.5 s apart
    assert 800 / 5 < float(rows["laptop"][2]) <= 800 / 0.5
    assert "\ngpu-a.lan:11434     up          3\ngpu-b.lan:11434   DOWN          2\n" in out
    assert max(len(line) for line in out.splitlines()) <= 100


@pytest.mark.parametrize("status, body, words", [
    (401, "unauthorized", "answered 401 X: GUARDPROXY_API_KEY is not set and --key not given"),
    (403, "forbidden", "answered 403 X: the key is neither an admin key nor has metrics = true"),
    (200, "<html><body>It works!</body></html>\n", "not Prometheus text"),
    (200, "# TYPE up gauge\nup 1\n", "no guardproxy_ series"),
    (502, "bad gateway", "answered 502 X"),
])
async def test_piped_a_failed_scrape_is_one_clear_line_and_exit_1(status: int, body: str, words: str) -> None:
    async with MetricsServer(status, body) as server:
        code, out, err = await run_piped(server.url, *(["--key", KEY] if status == 403 else []))
    assert (code, out) == (1, "")
    assert err.count("\n") == 1 and err.startswith("guardproxy top: ") and words in err, err


async def test_piped_nothing_listening_is_connection_refused() -> None:
    port = free_port()  # free a moment ago, no listener now
    code, out, err = await run_piped(f"127.0.0.1:{port}", "--key", KEY)
    assert (code, out) == (1, "")
    assert err == f"guardproxy top: cannot connect to 127.0.0.1 port {port}: connection refused (is guardproxy running there?)\n"


def screen_text(raw: bytes) -> str:
    return ANSI.sub("", raw.decode("utf-8", "replace")).replace("\r", "")


# Started with SIGINT ignored, as a background job of a script (and some CI runners) starts its commands: the
# ignore is inherited (asyncio's subprocesses keep it; uvloop's reset it), and Python then installs no
# KeyboardInterrupt handler of its own.  `top` must quit on Ctrl-C all the same.
_SIGINT_IGNORED = ("-c", "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
                         "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])")


@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")
@pytest.mark.parametrize("sigint", ["default", "ignored"])
@pytest.mark.parametrize("columns, rows", [(100, 40), (30, 12)])
async def test_on_a_terminal_it_redraws_live_until_interrupted(columns: int, rows: int, sigint: str) -> None:
    master, slave = open_terminal(rows, columns)
    loop = asyncio.get_running_loop()
    launcher = _SIGINT_IGNORED if sigint == "ignored" else ()
    async with MetricsServer() as server:
        proc = await asyncio.create_subprocess_exec(sys.executable, *launcher, "-m", "guardproxy", "top", server.url,
                                                    "--interval", "0.2", cwd=ROOT, env=env(GUARDPROXY_API_KEY=KEY, TERM="xterm"),
                                                    stdin=slave, stdout=slave, stderr=slave)
        os.close(slave)
        try:
            # The third frame is drawn once two frames with rates have been (the first has none).
            raw = await read_until(master, lambda b: b.count(b"\x1b[H") >= 3, loop.time() + 20)
            assert raw.startswith(b"\x1b[?1049h\x1b[?25l\x1b[H")  # alternate screen, cursor hidden, home
            assert proc.returncode is None  # still running: a live view does not exit by itself
            proc.send_signal(signal.SIGINT)
            raw += await read_until(master, lambda b: False, loop.time() + 10)
            code = await asyncio.wait_for(proc.wait(), 10)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            os.close(master)
    assert code == 0
    assert raw.endswith(b"\x1b[?25h\x1b[?1049l")  # the terminal is given back as it was
    frames = [screen_text(f) for f in raw.split(b"\x1b[H")[1:]]
    assert len(frames) >= 3
    for frame in frames:
        lines = frame.rstrip("\n").split("\n")
        assert len(lines) <= rows - 1 and all(len(line) <= columns - 1 for line in lines), frame
    last = frames[2]
    if columns >= 100:
        assert last.startswith(f"guardproxy 0.1.0 {server.url}/metrics\nconnections 17  streams 5  queue 4  requests/s ")
        assert re.search(r"\nlaptop +llama3\.2 +[0-9.]+k? +[0-9.]+k?\n", last), last
        assert "\nACTIVE STREAMS\nKEY        STREAMS\nci-runner        3\nlaptop           2\n" in last
        assert "tokens/s: after the next scrape" in frames[0]
    else:
        assert last.startswith("guardproxy 0.1.0 http://127.~\nconnections 17  streams 5\nqueue 4  requests/s ")


# --- against a real gate --------------------------------------------------------------------------

async def test_piped_against_a_running_gate_with_traffic(fake: FakeOllama, tmp_path: Path) -> None:
    """The names `top` reads are the names the gate writes: a real gate, real traffic, a piped `top`."""
    metrics_key = "gp_metrics-key-0123456789abcdefghijklmnop"
    keys = (KeyEntry("laptop", bytes.fromhex(hash_key(KEY))),
            KeyEntry("prometheus", bytes.fromhex(hash_key(metrics_key)), metrics=True))
    gate = await start_proxy(fake.port, tmp_path, keys=keys)
    stop = asyncio.Event()

    async def traffic() -> None:  # short generations one after another while `top` scrapes
        reader, writer = await asyncio.open_connection("127.0.0.1", gate.port)
        body = b'{"model":"llama3.2","prompt":"hi","stream":false,"options":{"num_predict":10}}'
        while not stop.is_set():
            writer.write(request_bytes("POST", "/api/generate", body, {"X-API-Key": KEY}))
            assert (await asyncio.wait_for(read_response(reader), 10)).status == 200
        writer.close()

    reader, writer = await asyncio.open_connection("127.0.0.1", gate.port)  # one stream that outlasts both scrapes
    writer.write(request_bytes("POST", "/api/generate", b'{"model":"qwen3:8b","prompt":"hi","fake_delay":0.05,'
                               b'"options":{"num_predict":400}}', {"X-API-Key": KEY, "Connection": "close"}))
    await asyncio.wait_for(reader.readuntil(b"tok0"), 10)
    for _ in range(2):
        assert (await fetch(gate.port, "GET", "/api/tags", headers={"X-API-Key": "gp_wrong"})).status == 401
    busy = asyncio.create_task(traffic())
    try:
        code, out, err = await run_piped(gate.url, "--interval", "0.5", COLUMNS="100", GUARDPROXY_API_KEY=metrics_key)
    finally:
        stop.set()
        writer.close()
        await asyncio.wait_for(busy, 10)
        await gate.server.stop(grace=0)
        gate.server.access_log.close()
    assert (code, err) == (0, ""), err
    assert out.startswith(f"guardproxy {__version__} {gate.url}/metrics\nconnections ")
    sections = dict(s.split("\n", 1) for s in out.split("\n\n")[1:] if "\n" in s)
    (name, streams), = (line.split() for line in sections["ACTIVE STREAMS"].splitlines()[1:])
    assert name == "laptop" and streams in ("1", "2")  # the long one, and a short one if the scrape met it
    tokens = {tuple(line.split()[:2]): line.split()[2:] for line in sections["TOKENS/S"].splitlines()[1:]}
    assert float(tokens["laptop", "llama3.2:latest"][1].rstrip("k")) > 0  # completion tokens per second
    codes = {line.split()[0]: line.split()[1:] for line in sections["REQUESTS"].splitlines()[1:]}
    assert float(codes["200"][0].rstrip("k")) > 0 and codes["401"] == ["0", "2"]
    assert sections["UPSTREAMS"].splitlines()[1].split()[:2] == [f"127.0.0.1:{fake.port}", "up"]
    assert sections["REFUSALS"].splitlines()[1].split() == ["unauthorized", "0", "2"]


async def test_a_hostile_metrics_page_reaches_the_screen_escaped() -> None:
    """Raw control characters in label values (a crafted /metrics, or a model a host listed) are shown escaped."""
    evil = "evil\x1b]0;PWNED\x07\x1b[2J\x1b[31m"
    body = ("# TYPE guardproxy_streams_active gauge\n"
            f'guardproxy_streams_active{{key="{evil}",model="{evil}"}} 2\n'
            "# TYPE guardproxy_upstream_up gauge\n"
            f'guardproxy_upstream_up{{upstream="http://{evil}"}} 1\n'
            "# TYPE guardproxy_build_info gauge\n"
            f'guardproxy_build_info{{version="{evil}"}} 1\n')
    async with MetricsServer(200, body) as server:
        code, out, err = await run_piped(server.url, "--interval", "0.2", COLUMNS="200", GUARDPROXY_API_KEY=KEY)
    assert (code, err) == (0, ""), err
    assert all(c == "\n" or c.isprintable() for c in out), repr(out)
    assert "evil\\x1b]0;PWNED\\x07\\x1b[2J\\x1b[31m" in out
