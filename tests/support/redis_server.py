"""A real redis-server for tests: a free loopback port, no persistence, gone when the test ends.

    async with redis_server(tmp_path) as server:          # or redis_server(tmp_path, password="pw")
        url = server.url()
        await server.command("SCRIPT", "FLUSH")            # on a connection of its own
        server.kill(); await server.start()               # same port again
        server.pause(); ...; server.resume()              # SIGSTOP / SIGCONT

Tests call `need_redis_server()` (or use the context manager or the `redis` fixture, which call it)
to be skipped, with the reason, when Debian's redis-server is not installed.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import signal
import ssl
import subprocess
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Sequence

import hiredis
import pytest

from .ports import free_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
START_TIMEOUT = 10.0


def need_redis_server() -> str:
    if sys.platform == "win32":  # (Wine would even start Linux's redis-server, with Windows paths)
        pytest.skip("not on Windows: needs redis-server from Debian's packages")
    if not os.access(REDIS_SERVER, os.X_OK):
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
    return REDIS_SERVER


@dataclass(frozen=True)
class TLSFiles:
    cert: Path
    key: Path
    ca: Path
    client_context: ssl.SSLContext


class RedisServer:
    def __init__(self, workdir: Path, *, password: str | None = None, tls: TLSFiles | None = None,
                 args: Sequence[str] = ()) -> None:
        self.workdir = workdir
        self.password = password
        self.tls = tls
        self.args = tuple(args)
        self.host = "127.0.0.1"
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log = workdir / f"redis-{self.port}.log"

    def url(self, db: int = 0, *, password: str | None = None) -> str:
        secret = self.password if password is None else password
        auth = f":{secret}@" if secret else ""
        return f"{'rediss' if self.tls else 'redis'}://{auth}{self.host}:{self.port}/{db}"

    async def start(self) -> None:
        """Start (or start again, on the same port) and return once it answers."""
        argv = [need_redis_server(), "--bind", self.host, "--save", "", "--appendonly", "no",
                "--dir", str(self.workdir), "--enable-debug-command", "local", "--daemonize", "no"]
        if self.tls:
            argv += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(self.tls.cert),
                     "--tls-key-file", str(self.tls.key), "--tls-ca-cert-file", str(self.tls.ca),
                     "--tls-auth-clients", "no"]
        else:
            argv += ["--port", str(self.port)]
        if self.password:
            argv += ["--requirepass", self.password]
        argv += self.args
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.log.read_text()[-2000:]}")
            try:
                await self.command("PING", timeout=1.0)
                return
            except (OSError, TimeoutError):
                await asyncio.sleep(0.01)   # polling a starting process, bounded by the deadline
        raise RuntimeError(f"redis-server did not answer within {START_TIMEOUT} s")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def pause(self) -> None:
        """SIGSTOP; returns once the process has stopped (waitpid reports it)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)
        _, status = os.waitpid(self.process.pid, os.WUNTRACED)
        if not os.WIFSTOPPED(status):
            raise RuntimeError(f"redis-server ended instead of stopping: {status:#x}")

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    async def command(self, *args: str | bytes | int | float, db: int = 0, timeout: float = 5.0) -> object:
        """One command on a connection of its own (not the client under test); error replies are returned."""
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                self.host, self.port, ssl=self.tls.client_context if self.tls else None)
            try:
                setup: list[tuple[str | bytes | int | float, ...]] = []
                if self.password:
                    setup.append(("AUTH", self.password))
                if db:
                    setup.append(("SELECT", db))
                for cmd in (*setup, args):
                    writer.write(hiredis.pack_command(cmd))  # type: ignore[arg-type]
                parser = hiredis.Reader()
                replies: list[object] = []
                while len(replies) < len(setup) + 1:
                    data = await reader.read(65536)
                    if not data:
                        raise ConnectionResetError("redis-server closed the connection")
                    parser.feed(data)
                    while (reply := parser.gets()) is not False:
                        replies.append(reply)
                return replies[-1]
            finally:
                writer.close()


@asynccontextmanager
async def redis_server(workdir: Path, *, password: str | None = None, tls: TLSFiles | None = None,
                       args: Sequence[str] = ()) -> AsyncIterator[RedisServer]:
    need_redis_server()
    server = RedisServer(workdir, password=password, tls=tls, args=args)
    try:
        await server.start()
        yield server
    finally:
        server.kill()   # SIGKILL ends a stopped process too


@pytest.fixture
async def redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A redis-server of the test's own."""
    async with redis_server(tmp_path) as server:
        yield server


def tls_files(workdir: Path) -> TLSFiles:
    """A throwaway CA and a certificate for 127.0.0.1 (trustme, from the test extras)."""
    import trustme
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    files = TLSFiles(workdir / "redis.crt", workdir / "redis.key", workdir / "ca.crt", ssl.create_default_context())
    cert.cert_chain_pems[0].write_to_path(str(files.cert))
    cert.private_key_pem.write_to_path(str(files.key))
    ca.cert_pem.write_to_path(str(files.ca))
    ca.configure_trust(files.client_context)
    return files


async def stalled(redis: RedisServer) -> bool:
    """True once Redis stops answering (DEBUG SLEEP has begun)."""
    try:
        await redis.command("PING", timeout=0.02)
    except TimeoutError:
        return True
    return False
