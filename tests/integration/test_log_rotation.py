"""Log rotation: SIGHUP and SIGUSR1 reopen the access log, `usage` reads the rotated files,
and a failed access-log write is counted in /metrics."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from conftest import KEY, make_config
from guardproxy.cli import main
from guardproxy.config.model import KeyEntry
from guardproxy.config.write import hash_key
from guardproxy.engine.accesslog import AccessLog
from guardproxy.engine.server import GuardServer
from guardproxy.testing.fake_ollama import FakeOllama
from support.polling import until
from support.processes import Running
from support.raw_http import fetch

AUTH = {"X-API-Key": KEY}
one_loop = pytest.mark.asyncio(loop_factories=["asyncio"])  # (the gate runs in a child process)


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


@pytest.mark.skipif(sys.platform == "win32", reason="Windows has neither SIGHUP nor SIGUSR1")
@pytest.mark.parametrize("signame", ["SIGHUP", "SIGUSR1"])
@one_loop
async def test_a_signal_reopens_the_access_log_after_a_rename(tmp_path: Path, fake: FakeOllama,
                                                              signame: str) -> None:
    log = tmp_path / "access.log"
    config = tmp_path / "guardproxy.toml"
    config.write_text(f'listen = "127.0.0.1:0"\nupstream = "http://127.0.0.1:{fake.port}"\n'
                      f'[log]\naccess = "{log}"\n[routing]\nhealth_interval = 0\n'
                      f'[[keys]]\nname = "app"\nkey_sha256 = "{hash_key(KEY)}"\n')
    gate = await Running.start("run", "--config", str(config), cwd=tmp_path)
    try:
        assert (await fetch(gate.port, "GET", "/api/version", headers=AUTH)).status == 200
        await until(lambda: log.exists() and len(lines(log)) == 1)
        os.rename(log, tmp_path / "access.log.1")           # what logrotate does by default
        assert (await fetch(gate.port, "GET", "/api/tags", headers=AUTH)).status == 200
        await until(lambda: len(lines(tmp_path / "access.log.1")) == 2)  # still the old file: not reopened yet
        gate.proc.send_signal(getattr(signal, signame))
        await until(log.exists)                              # reopened by its name
        assert (await fetch(gate.port, "GET", "/api/ps", headers=AUTH)).status == 200
        await until(lambda: len(lines(log)) == 1)
        assert lines(log)[0]["path"] == "/api/ps"
        assert [r["path"] for r in lines(tmp_path / "access.log.1")] == ["/api/version", "/api/tags"]
        assert gate.proc.returncode is None                  # the signal did not stop it
    finally:
        assert await gate.stop() == 0


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (a disk that is always full)")
async def test_failed_access_log_writes_are_counted_in_metrics(fake: FakeOllama) -> None:
    keys = (KeyEntry("laptop", bytes.fromhex(hash_key(KEY))),
            KeyEntry("prometheus", bytes.fromhex(hash_key("gp_metrics-key-0123456789abcdefghijklmnop")), metrics=True))
    server = GuardServer(make_config(fake.port, keys=keys, access_log="/dev/full"), access_log=AccessLog("/dev/full"))
    await server.start()
    try:
        for _ in range(2):
            assert (await fetch(server.port, "GET", "/api/version", headers=AUTH)).status == 200
        await until(lambda: server.access_log.write_errors >= 1)
        r = await fetch(server.port, "GET", "/metrics",
                        headers={"Authorization": "Bearer gp_metrics-key-0123456789abcdefghijklmnop"})
        assert r.status == 200
        counted = [ln for ln in r.body.decode().splitlines()
                   if ln.startswith("guardproxy_access_log_write_errors_total ")]
        assert counted and float(counted[0].split()[1]) >= 1
    finally:
        await server.stop(grace=0)
        server.access_log.close()


def test_usage_reads_the_rotated_files_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def line(key: str) -> str:
        return json.dumps({"time": "2026-11-26T10:00:00Z", "client": "1.1.1.1", "status": 200, "key": key}) + "\n"
    log = tmp_path / "access.log"
    log.write_text(line("now"))
    (tmp_path / "access.log.1").write_text(line("yesterday") * 2)
    with gzip.open(tmp_path / "access.log.2.gz", "wt") as f:
        f.write(line("before") * 3)
    (tmp_path / "access.log-20261120.gz").write_bytes(gzip.compress(line("dated").encode() * 4))
    (tmp_path / "other.log.1").write_text(line("not-ours"))
    assert main(["usage", "--log", str(log), "--since", "all"]) == 0
    out = capsys.readouterr().out
    rows = {ln.split()[0]: ln.split()[1] for ln in out.splitlines()[1:] if ln and not ln.startswith("(")}
    assert rows == {"now": "1", "yesterday": "2", "before": "3", "dated": "4"}
    assert "(with 3 rotated files: access.log-20261120.gz, access.log.2.gz, access.log.1)" in out
    # A rotated file last written before the window holds nothing for it: not even opened.
    os.utime(tmp_path / "access.log.2.gz", (0, 0))
    (tmp_path / "access.log-20261120.gz").write_bytes(b"not gzip")
    os.utime(tmp_path / "access.log-20261120.gz", (0, 0))
    assert main(["usage", "--log", str(log), "--since", "1h"]) == 0
    # A broken rotated file in the window is named, in one line.
    os.utime(tmp_path / "access.log-20261120.gz")
    capsys.readouterr()
    assert main(["usage", "--log", str(log), "--since", "all"]) == 2
    assert "access.log-20261120.gz: cannot read" in capsys.readouterr().err
