"""The Windows service host's logic, run here with a stand-in for pywin32.

pywin32 exists only on Windows, so the three modules the host uses are
replaced by small fakes that record what the service reports to the SCM.
Everything of guardproxy's own is real: the config file, the server, the
rotating log files, the graceful stop, the fake Ollama behind it.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import sys
import types
from pathlib import Path

import pytest

from conftest import KEY
from guardproxy.ops.winservice.host import service_class
from guardproxy.testing.fake_ollama import FakeOllama
from support.polling import until
from support.raw_http import request_bytes


class FakeSCM:
    def __init__(self) -> None:
        self.reports: list[tuple[int, int]] = []
        self.errors: list[str] = []

    def modules(self) -> dict[str, types.ModuleType]:
        scm = self

        class ServiceFramework:
            def __init__(self, args: list[str]) -> None:
                self.args = args

            def ReportServiceStatus(self, status: int, waitHint: int = 5000, win32ExitCode: int = 0,
                                    svcExitCode: int = 0) -> None:
                scm.reports.append((status, waitHint))

        win32serviceutil = types.ModuleType("win32serviceutil")
        win32serviceutil.ServiceFramework = ServiceFramework  # type: ignore[attr-defined]
        win32service = types.ModuleType("win32service")
        win32service.SERVICE_STOP_PENDING = 3  # type: ignore[attr-defined]
        servicemanager = types.ModuleType("servicemanager")
        servicemanager.LogErrorMsg = scm.errors.append  # type: ignore[attr-defined]
        return {"win32serviceutil": win32serviceutil, "win32service": win32service,
                "servicemanager": servicemanager}


@pytest.fixture
def scm(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeSCM:
    fake = FakeSCM()
    for name, module in fake.modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    # The host replaces stdout/stderr and changes directory, as a service must.
    monkeypatch.setattr(sys, "stdout", sys.stdout)
    monkeypatch.setattr(sys, "stderr", sys.stderr)
    monkeypatch.chdir(tmp_path)
    return fake


def write_config(directory: Path, upstream_port: int, extra: str = "") -> Path:
    path = directory / "guardproxy.toml"
    path.write_text(f'listen = "127.0.0.1:0"\nupstream = "http://127.0.0.1:{upstream_port}"\n'
                    f'[timeouts]\ngrace = "7s"\n{extra}\n'
                    f'[[keys]]\nname = "laptop"\nkey_sha256 = "{hashlib.sha256(KEY.encode()).hexdigest()}"\n')
    return path


async def wait_for_text(path: Path, pattern: str, timeout: float = 10.0) -> re.Match[str] | None:
    """A file the service's thread writes: polled, since no event says it changed."""
    return await until(lambda: re.search(pattern, path.read_text() if path.exists() else ""), timeout)


async def test_service_serves_then_stops_gracefully_on_the_scm_stop(scm: FakeSCM, fake: FakeOllama,
                                                                      tmp_path: Path) -> None:
    conf_dir = tmp_path / "ProgramData" / "guardproxy"
    conf_dir.mkdir(parents=True)
    config = write_config(conf_dir, fake.port)
    service = service_class(str(config), "guardproxy")(["guardproxy"])
    host = asyncio.create_task(asyncio.to_thread(service.SvcDoRun))

    log = conf_dir / "guardproxy.log"
    port = int((await wait_for_text(log, r"listening on http://127\.0\.0\.1:(\d+)")).group(1))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request_bytes("POST", "/api/generate",
                               b'{"model":"llama3.2","prompt":"hi","fake_delay":0.02,"options":{"num_predict":15}}',
                               {"X-API-Key": KEY, "Connection": "close"}))
    await asyncio.wait_for(reader.readuntil(b"tok0"), 10)

    service.SvcStop()  # what the SCM calls, from its own thread
    rest = await asyncio.wait_for(reader.read(-1), 5)
    writer.close()
    assert b'"done":true' in rest and rest.endswith(b"0\r\n\r\n")  # the running stream finished
    await asyncio.wait_for(host, 10)

    assert scm.reports == [(3, 17000)]  # STOP_PENDING, with the grace period (7 s) + 10 s as the hint
    text = log.read_text()
    assert re.search(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ guardproxy: shutting down \(grace 7s\)$", text, re.M)
    assert text.rstrip().endswith("guardproxy: service stopped (exit 0)")
    access = [line for line in (conf_dir / "access.log").read_text().splitlines() if line]
    assert len(access) == 1 and '"path":"/api/generate"' in access[0] and '"status":200' in access[0]
    assert scm.errors == []


async def test_a_stop_before_the_loop_runs_is_not_lost(scm: FakeSCM, fake: FakeOllama, tmp_path: Path) -> None:
    config = write_config(tmp_path, fake.port)
    service = service_class(str(config), "guardproxy")(["guardproxy"])
    service.SvcStop()
    await asyncio.wait_for(asyncio.to_thread(service.SvcDoRun), 10)
    assert "service stopped (exit 0)" in (tmp_path / "guardproxy.log").read_text()


async def test_a_config_error_is_logged_and_reported_as_a_failure(scm: FakeSCM, tmp_path: Path) -> None:
    config = write_config(tmp_path, 11434, extra='bogus = "x"\n')
    service = service_class(str(config), "guardproxy")(["guardproxy"])
    with pytest.raises(RuntimeError, match="exited with code 2"):
        await asyncio.wait_for(asyncio.to_thread(service.SvcDoRun), 10)
    text = (tmp_path / "guardproxy.log").read_text()
    assert "guardproxy: config error: " in text and "timeouts.bogus: expected one of the known fields" in text
    assert len(scm.errors) == 1 and scm.errors[0].startswith("guardproxy: config error:")
