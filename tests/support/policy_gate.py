"""Helpers shared by test_policies.py and test_limits_over_sockets.py."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from conftest import KEY, OTHER_KEY, Proxy, make_config
from guardproxy.engine.accesslog import AccessLog
from guardproxy.config.model import Cors, KeyEntry
from guardproxy.config.write import hash_key
from guardproxy.testing.fake_ollama import FakeOllama
from guardproxy.engine.server import GuardServer

ADMIN_KEY = "gp_admin-key-0123456789abcdefghijklmnopqrstu"
APP = {"X-API-Key": KEY}          # "app": only qwen3:* and llama3.2
PHONE = {"X-API-Key": OTHER_KEY}  # "phone": every model
ADMIN = {"X-API-Key": ADMIN_KEY}


def digest(key: str) -> bytes:
    return bytes.fromhex(hash_key(key))


KEYS = (KeyEntry("app", digest(KEY), models=("qwen3:*", "llama3.2")),
        KeyEntry("phone", digest(OTHER_KEY)),
        KeyEntry("admin", digest(ADMIN_KEY), admin=True))


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def start(fake_port: int, tmp_path: Path, **overrides: Any) -> Proxy:
    log_path = tmp_path / "access.log"
    keys = overrides.pop("keys", KEYS)
    config = replace(make_config(fake_port, access_log=str(log_path), **overrides), keys=keys)
    server = GuardServer(config, access_log=AccessLog(str(log_path)))
    await server.start()
    return Proxy(server, log_path)


@pytest.fixture
async def gp(fake: FakeOllama, tmp_path: Path) -> AsyncIterator[Proxy]:
    p = await start(fake.port, tmp_path, cors=Cors(("https://app.example",), 600))
    try:
        yield p
    finally:
        await p.server.stop(grace=0)
        p.server.access_log.close()


async def stop(p: Proxy) -> None:
    await p.server.stop(grace=0)
    p.server.access_log.close()
