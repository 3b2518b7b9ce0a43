"""`doctor` says what stops the gate: an access log `run` cannot open, a Redis that is down, refuses the
password or is a replica (a real redis-server), and a down [[upstreams]] host, named as such."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from conftest import KEY
from guardproxy.ops.doctor import FAIL, OK, Finding, run_doctor
from guardproxy.testing.fake_ollama import FakeOllama
from support.ports import free_port
from support.processes import gp
from support.redis_server import redis_server

one_loop = pytest.mark.asyncio(loop_factories=["asyncio"])
KEY_LINE = f'[[keys]]\nname = "laptop"\nkey_sha256 = "{hashlib.sha256(KEY.encode()).hexdigest()}"\n'


def write(tmp_path: Path, upstream_port: int, extra: str = "") -> Path:
    path = tmp_path / "guardproxy.toml"
    path.write_text(f'listen = "127.0.0.1:0"\nupstream = "http://127.0.0.1:{upstream_port}"\n{extra}\n{KEY_LINE}')
    path.chmod(0o600)
    return path


async def doctor(path: Path) -> list[Finding]:
    return await asyncio.to_thread(run_doctor, str(path), {})


def said(findings: list[Finding], level: str, part: str) -> list[Finding]:
    return [f for f in findings if f.level == level and part in f.text]


@one_loop
async def test_an_access_log_run_cannot_open_is_not_a_valid_config(fake: FakeOllama, tmp_path: Path) -> None:
    path = write(tmp_path, fake.port, '[log]\naccess = "no-such-folder/access.log"\n')
    findings = await doctor(path)
    assert not said(findings, OK, "config valid")
    (fail,) = said(findings, FAIL, "log.access")
    assert fail.text.startswith(f"config: {path}:4: log.access: cannot open ") and "does not exist" in fail.text
    run = await asyncio.to_thread(gp, "run", "--config", str(path), cwd=tmp_path)
    assert run.returncode == 2 and "does not exist" in run.stderr  # the same judgement as `run`


@one_loop
async def test_a_down_upstreams_host_gets_advice_about_that_host(fake: FakeOllama, tmp_path: Path) -> None:
    dead = free_port()
    path = write(tmp_path, fake.port, f'[[upstreams]]\nname = "gpu-a"\nurl = "http://127.0.0.1:{fake.port}"\n'
                                      f'[[upstreams]]\nname = "gpu-b"\nurl = "http://127.0.0.1:{dead}"\n')
    (fail,) = said(await doctor(path), FAIL, "nothing answers")
    assert fail.text == f"gpu-b: nothing answers at http://127.0.0.1:{dead}"
    assert 'the url of [[upstreams]] "gpu-b"' in fail.fix and "set `upstream`" not in fail.fix
    assert "requests go to the other hosts" in fail.fix


@one_loop
async def test_redis_down_wrong_password_replica_and_well(fake: FakeOllama, tmp_path: Path) -> None:
    async with redis_server(tmp_path, password="right") as redis:
        well = write(tmp_path, fake.port, f'[cluster]\nredis = "{redis.url()}"\n')
        (ok,) = said(await doctor(well), OK, "cluster:")
        assert ok.text.startswith("cluster: Redis ") and f"at redis://:***@127.0.0.1:{redis.port}/0 answers" in ok.text
        wrong = write(tmp_path, fake.port, f'[cluster]\nredis = "{redis.url(password="wrong")}"\n')
        (fail,) = said(await doctor(wrong), FAIL, "cluster:")
        assert "refused the password" in fail.text and "$GUARDPROXY_REDIS_URL" in fail.fix
        replica_dir = tmp_path / "replica"
        replica_dir.mkdir()
        async with redis_server(replica_dir, args=("--replicaof", "127.0.0.1", str(redis.port),
                                                   "--masterauth", "right")) as replica:
            follower = write(tmp_path, fake.port, f'[cluster]\nredis = "{replica.url()}"\n')
            (fail,) = said(await doctor(follower), FAIL, "cluster:")
            assert "is a replica" in fail.text and "primary" in fail.fix
    down = write(tmp_path, fake.port, f'[cluster]\nredis = "redis://127.0.0.1:{free_port()}"\n')
    loop = asyncio.get_running_loop()
    started = loop.time()
    (fail,) = said(await doctor(down), FAIL, "cluster:")
    assert "nothing listens there (connection refused)" in fail.text and "start Redis" in fail.fix
    assert loop.time() - started < 30
