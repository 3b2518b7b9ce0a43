"""Shared fixtures: a real guardproxy in front of the fake Ollama, on loopback.

Integration tests run under both event loops (plain asyncio and uvloop);
`pytest --loop asyncio` restricts the run to one of them.  Tests marked `perf`
(assertions on wall-clock time) run last.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import pytest

from guardproxy.engine.accesslog import AccessLog
from guardproxy.config.model import Config, KeyEntry, Routing, Timeouts, Upstream
from guardproxy.config.write import hash_key
from guardproxy.testing.fake_ollama import FakeOllama
from guardproxy.engine.server import GuardServer
from support.upstreams import RecordingUpstream
from support.wine import REDIS_SERVER

KEY = "gp_test-key-0123456789abcdefghijklmnopqrstuv"
OTHER_KEY = "gp_second-key-0123456789abcdefghijklmnopqrs"
ADMIN_KEY = "gp_admin-key-0123456789abcdefghijklmnopqrst"  # may use every route, the fake's own /fake/* too


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--loop", choices=("all", "asyncio", "uvloop"), default="all",
                     help="event loop(s) for the integration tests")


def _under_wine() -> bool:
    """A Windows CPython running in Wine (ntdll exports wine_get_version there)."""
    if sys.platform != "win32":
        return False
    import ctypes
    try:
        return hasattr(ctypes.WinDLL("ntdll"), "wine_get_version")
    except OSError:
        return False


ON_WINDOWS = sys.platform == "win32"
UNDER_WINE = _under_wine()


def _skip_reason(item: pytest.Item) -> str | None:
    """Why a test marked `posix_only`, `windows_only` or `wine_skip` cannot run here (None: it runs)."""
    for name, applies, prefix in (("posix_only", ON_WINDOWS, "not on Windows"),
                                  ("windows_only", not ON_WINDOWS, "Windows only"),
                                  ("wine_skip", UNDER_WINE, "not under Wine")):
        mark = item.get_closest_marker(name)
        if mark is None:
            continue
        if not mark.args or not isinstance(mark.args[0], str) or not mark.args[0]:
            raise pytest.UsageError(f"{item.nodeid}: @pytest.mark.{name} needs a reason as its argument")
        if applies:
            return f"{prefix}: {mark.args[0]}"
    return None


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `perf` assert on wall-clock time: they run last, after the rest of the suite
    has stopped competing for the CPU (a stable sort keeps every other order as collected).
    Tests marked `posix_only` / `windows_only` / `wine_skip` are skipped, with their reason, on Windows /
    elsewhere / under Wine."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        if "redis" in getattr(item, "fixturenames", ()) or (callspec is not None
                                                            and callspec.params.get("backend") == "redis"):
            item.add_marker(pytest.mark.posix_only(REDIS_SERVER))
        reason = _skip_reason(item)
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=reason))
    items.sort(key=lambda item: item.get_closest_marker("perf") is not None)


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    wanted = config.getoption("--loop")
    factories: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {}
    if wanted in ("all", "asyncio"):
        factories["asyncio"] = asyncio.new_event_loop
    if wanted in ("all", "uvloop") and sys.platform != "win32" and "integration" in str(item.path):
        try:
            import uvloop
        except ImportError:
            pass
        else:
            factories["uvloop"] = uvloop.new_event_loop
    if not factories:
        factories["asyncio"] = asyncio.new_event_loop
    return factories


def make_config(upstream_port: int, **overrides: Any) -> Config:
    timeouts = overrides.pop("timeouts", Timeouts())
    # No health checks unless a test asks for them: what reaches a fake upstream is then the test's alone.
    routing = overrides.pop("routing", Routing(health_interval=0))
    keys = overrides.pop("keys", (KeyEntry("laptop", bytes.fromhex(hash_key(KEY))),
                                  KeyEntry("phone", bytes.fromhex(hash_key(OTHER_KEY))),
                                  KeyEntry("owner", bytes.fromhex(hash_key(ADMIN_KEY)), admin=True)))
    return Config(path=None, listen_host="127.0.0.1", listen_port=0,
                  upstream=Upstream("127.0.0.1", upstream_port), keys=keys,
                  access_log=overrides.pop("access_log", ""), timeouts=timeouts, routing=routing, **overrides)


class Proxy:
    """A running GuardServer and where its access log goes."""

    def __init__(self, server: GuardServer, log_path: Path) -> None:
        self.server = server
        self.log_path = log_path
        self.port = server.port
        self.url = f"http://127.0.0.1:{server.port}"

    def log_lines(self) -> list[dict[str, Any]]:
        self.server.access_log.flush()
        text = self.log_path.read_text() if self.log_path.exists() else ""
        return [json.loads(line) for line in text.splitlines() if line]


async def start_proxy(upstream_port: int, tmp_path: Path, **overrides: Any) -> Proxy:
    log_path = tmp_path / "access.log"
    config = make_config(upstream_port, access_log=str(log_path), **overrides)
    server = GuardServer(config, access_log=AccessLog(str(log_path)))
    await server.start()
    return Proxy(server, log_path)


@pytest.fixture
async def fake() -> AsyncIterator[FakeOllama]:
    server = await FakeOllama.start()
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
async def proxy(fake: FakeOllama, tmp_path: Path) -> AsyncIterator[Proxy]:
    p = await start_proxy(fake.port, tmp_path)
    try:
        yield p
    finally:
        await p.server.stop(grace=0)
        p.server.access_log.close()


@pytest.fixture
async def upstream() -> AsyncIterator[RecordingUpstream]:
    """A scriptable upstream that records exactly what reaches it (tests/support/upstreams.py)."""
    up = await RecordingUpstream.start()
    try:
        yield up
    finally:
        await up.close()
