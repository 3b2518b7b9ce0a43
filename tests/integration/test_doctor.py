"""`guardproxy doctor` against the fake Ollama.  Traffic goes to 127.0.0.1 only; a fake
Ollama bound to 0.0.0.0 is found through the socket table, never by connecting to a LAN address."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import sys
import tomllib
from pathlib import Path

import pytest
import trustme

from conftest import KEY, Proxy
from guardproxy import cli
from guardproxy.ops import systemd
from guardproxy.ops.doctor import (FAIL, INFO, OK, WARN, Finding, check_file_mode, check_open_files, check_windows_service,
                                   run_doctor)
from guardproxy.testing.fake_ollama import FakeOllama

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/net/tcp")


def write_config(tmp_path: Path, upstream_port: int, *, listen: str = "127.0.0.1:0", extra: str = "",
                 key_line: str | None = None) -> Path:
    key_line = key_line or f'key_sha256 = "{hashlib.sha256(KEY.encode()).hexdigest()}"'
    path = tmp_path / "guardproxy.toml"
    path.write_text(f'listen = "{listen}"\nupstream = "http://127.0.0.1:{upstream_port}"\n{extra}\n'
                    f'[[keys]]\nname = "laptop"\n{key_line}\n', encoding="utf-8")
    path.chmod(0o600)
    return path


async def doctor(path: Path | str | None) -> list[Finding]:
    return await asyncio.to_thread(run_doctor, str(path) if path else None, {})


def texts(findings: list[Finding], level: str) -> list[str]:
    return [f.line() for f in findings if f.level == level]


@linux_only
async def test_a_good_setup_has_no_problems(fake: FakeOllama, tmp_path: Path) -> None:
    findings = await doctor(write_config(tmp_path, fake.port))
    assert texts(findings, FAIL) == [] and texts(findings, WARN) == []
    oks = texts(findings, OK)
    assert any("config valid" in t for t in oks)
    assert f"ok    upstream http://127.0.0.1:{fake.port} is Ollama 0.12.0" in oks
    assert f"ok    port {fake.port} is not open to other machines (it listens on loopback only)" in oks
    assert f"ok    upstream http://127.0.0.1:{fake.port} lists 3 models: llama3.2:latest, qwen3:8b, mistral:7b" in oks
    assert [r.target for r in fake.requests] == ["/api/version", "/api/tags", "/api/status"]


@pytest.mark.parametrize("disabled", [False, True])
async def test_doctor_says_whether_the_local_ollama_runs_cloud_models(fake: FakeOllama, tmp_path: Path,
                                                                       disabled: bool) -> None:
    fake.cloud_disabled = disabled
    findings = await doctor(write_config(tmp_path, fake.port))
    (line,) = [f.line() for f in findings if "cloud models" in f.text]
    if disabled:
        assert line.startswith("ok") and "turned off" in line
    else:
        assert line.startswith("info") and "cloud = true" in line and "OLLAMA_NO_CLOUD=1" in line


@linux_only
async def test_ollama_on_all_interfaces_is_a_failure_with_the_fix(tmp_path: Path) -> None:
    exposed = await FakeOllama.start("0.0.0.0", 0)  # bound to all interfaces; reached only via 127.0.0.1
    try:
        findings = await doctor(write_config(tmp_path, exposed.port))
    finally:
        await exposed.close()
    fails = [f for f in findings if f.level == FAIL]
    assert len(fails) == 1
    assert fails[0].text.startswith(f"Ollama listens on 0.0.0.0:{exposed.port}: anyone on the LAN")
    assert "OLLAMA_HOST=127.0.0.1" in fails[0].fix
    assert any(f.text == f"upstream http://127.0.0.1:{exposed.port} is Ollama 0.12.0" for f in findings)


@linux_only
async def test_the_cli_prints_one_line_per_finding_and_exits_1_on_failure(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    exposed = await FakeOllama.start("0.0.0.0", 0)
    try:
        code = await asyncio.to_thread(cli.main, ["doctor", "--config", str(write_config(tmp_path, exposed.port))])
    finally:
        await exposed.close()
    out = capsys.readouterr().out
    assert code == 1
    line = next(x for x in out.splitlines() if x.startswith("FAIL"))
    assert f"0.0.0.0:{exposed.port}" in line and " -- fix: bind Ollama to loopback" in line


async def test_upstream_down_is_a_failure(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        findings = await doctor(write_config(tmp_path, port))
    assert f"FAIL  nothing answers at http://127.0.0.1:{port} -- fix: start Ollama" in \
        "\n".join(texts(findings, FAIL))


async def test_plaintext_key_gets_its_hash_as_the_fix(fake: FakeOllama, tmp_path: Path) -> None:
    findings = await doctor(write_config(tmp_path, fake.port, key_line=f'key = "{KEY}"'))
    warn = [f for f in findings if f.level == WARN]
    assert len(warn) == 1 and warn[0].text.startswith('key "laptop" is stored in plaintext')
    assert warn[0].fix == f'replace its `key = "..."` line with `key_sha256 = "{hashlib.sha256(KEY.encode()).hexdigest()}"`'
    assert KEY not in warn[0].line()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX modes")
@pytest.mark.parametrize("mode", [0o644, 0o640])
async def test_a_world_readable_config_of_key_hashes_is_fine(fake: FakeOllama, tmp_path: Path, mode: int) -> None:
    """The systemd unit's layout: 0644 (or 0640 with a group), since its DynamicUser cannot own the file."""
    path = write_config(tmp_path, fake.port)
    path.chmod(mode)
    findings = await doctor(path)
    assert texts(findings, WARN) == [] and texts(findings, FAIL) == []
    assert "chmod" not in "\n".join(f.line() for f in findings)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX modes")
async def test_a_world_readable_secret_is_a_warning_whose_fix_keeps_a_service_running(fake: FakeOllama,
                                                                                      tmp_path: Path) -> None:
    path = write_config(tmp_path, fake.port, extra='[cluster]\nredis = "redis://:s3cret@127.0.0.1:1"\n')
    path.chmod(0o644)
    raw = tomllib.loads(path.read_text())
    (service,) = check_file_mode(path, raw, service=True)
    assert service.level == WARN and service.text == f"{path} holds the Redis password and is readable by every user (mode 644)"
    assert "chmod 600" not in service.fix and "$GUARDPROXY_REDIS_URL" in service.fix
    assert f"chgrp guardproxy-config {path} && chmod 0640 {path}" in service.fix
    (by_hand,) = check_file_mode(path, raw, service=False)
    assert f"chmod 600 {path} if guardproxy runs as its owner" in by_hand.fix
    path.chmod(0o640)
    assert check_file_mode(path, raw, service=True) == []


async def test_invalid_config_names_file_and_line_and_checks_go_on(fake: FakeOllama, tmp_path: Path) -> None:
    path = write_config(tmp_path, fake.port, extra='[timeouts]\nread = "forever"\n')
    findings = await doctor(path)
    assert texts(findings, FAIL)[0].startswith(f"FAIL  config: {path}:4: timeouts.read: expected a duration")
    # The upstream named in the broken file is still checked.
    assert any(f.text.startswith(f"upstream http://127.0.0.1:{fake.port} is Ollama") for f in findings)


async def test_missing_config_says_how_to_create_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    findings = await doctor(None)
    assert findings[0].level == FAIL and "no config file found" in findings[0].text
    assert "guardproxy init" in findings[0].fix


async def test_listen_port_taken_by_another_program(fake: FakeOllama, tmp_path: Path) -> None:
    other = await FakeOllama.start()  # something that is not guardproxy holds the port
    try:
        findings = await doctor(write_config(tmp_path, fake.port, listen=f"127.0.0.1:{other.port}"))
    finally:
        await other.close()
    assert f"FAIL  listen port 127.0.0.1:{other.port} is taken by another program -- fix: stop that program, " \
           f"or choose another `listen` port in the config" in texts(findings, FAIL)


async def test_listen_port_held_by_a_running_guardproxy_is_fine(proxy: Proxy, fake: FakeOllama, tmp_path: Path) -> None:
    findings = await doctor(write_config(tmp_path, fake.port, listen=f"127.0.0.1:{proxy.port}"))
    assert f"ok    guardproxy is already running on 127.0.0.1:{proxy.port}" in texts(findings, OK)


async def test_listen_on_a_specific_address_is_not_bound(fake: FakeOllama, tmp_path: Path) -> None:
    findings = await doctor(write_config(tmp_path, fake.port, listen="192.0.2.10:11435"))
    assert any(f.text.startswith("listen address 192.0.2.10:11435 not tested") for f in findings)


async def test_tls_files_are_checked_from_a_tls_table(fake: FakeOllama, tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    other = ca.issue_cert("other.example")
    other.private_key_pem.write_to_path(str(tmp_path / "other-key.pem"))

    good = await doctor(write_config(tmp_path, fake.port, extra='[tls]\ncert = "cert.pem"\nkey = "key.pem"\n'))
    assert any(f.level == OK and f.text.startswith("TLS files readable") for f in good)

    missing = await doctor(write_config(tmp_path, fake.port, extra='[tls]\ncert = "cert.pem"\nkey = "nope.pem"\n'))
    assert any(f.level == FAIL and f.text.startswith(f"tls.key: cannot read {tmp_path / 'nope.pem'}")
               for f in missing)

    mismatched = await doctor(write_config(tmp_path, fake.port,
                                           extra='[tls]\ncert = "cert.pem"\nkey = "other-key.pem"\n'))
    assert any(f.level == FAIL and "do not load as a certificate and its key" in f.text for f in mismatched)


def test_open_file_limit() -> None:
    low = check_open_files((256, 4096))
    assert low[0].level == WARN and "LimitNOFILE=65536" in low[0].fix and "about 2048 simultaneous" in low[0].text
    assert "server.max_connections = 10000 needs about 10256" in low[0].text
    assert check_open_files((65536, 65536))[0].level == OK
    assert check_open_files((-1, -1))[0].text == "open-file limit unlimited"


def test_open_file_limit_is_judged_as_run_judges_it() -> None:
    # run raises the soft limit towards the hard one, and needs max_connections plus its headroom.
    assert check_open_files((256, 4096), max_connections=1000)[0].text == \
        "open-file limit 256, raised to 1256 at start-up (server.max_connections = 1000)"
    assert check_open_files((2048, 2048))[0].level == WARN
    assert check_open_files((2048, 2048), max_connections=1792)[0].level == OK


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="doctor looks for systemd on Linux only")
@pytest.mark.parametrize("systemd_runs", [True, False])
def test_doctor_speaks_of_a_missing_systemd_unit_only_where_systemd_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, systemd_runs: bool) -> None:
    monkeypatch.setattr(systemd, "has_systemd", lambda: systemd_runs)
    findings = run_doctor(str(tmp_path / "none.toml"), {}, service_name="guardproxy-no-such-unit-3f9c", table=False)
    said = [(f.level, f.text) for f in findings if "systemd unit" in f.text]
    assert said == ([(INFO, 'no systemd unit "guardproxy-no-such-unit-3f9c" installed')] if systemd_runs else [])


@linux_only
async def test_every_host_is_reported_and_only_the_exposed_one_fails(tmp_path: Path) -> None:
    inside = await FakeOllama.start("127.0.0.2", 0, models=["llama3.2"])
    exposed = await FakeOllama.start("0.0.0.0", 0, models=["qwen3:8b", "mistral:7b"])
    path = tmp_path / "guardproxy.toml"
    path.write_text('listen = "127.0.0.1:0"\n'
                    f'[[upstreams]]\nname = "gpu-a"\nurl = "{inside.url}"\nmax_concurrent = 2\n'
                    f'[[upstreams]]\nname = "gpu-b"\nurl = "http://127.0.0.1:{exposed.port}"\nmax_concurrent = 2\n'
                    f'[[keys]]\nname = "laptop"\nkey_sha256 = "{hashlib.sha256(KEY.encode()).hexdigest()}"\n')
    path.chmod(0o600)
    try:
        findings = await doctor(path)
    finally:
        await inside.close()
        await exposed.close()
    oks = texts(findings, OK)
    assert f"ok    gpu-a: upstream {inside.url} is Ollama 0.12.0" in oks
    assert f"ok    gpu-a: upstream {inside.url} lists 1 model: llama3.2" in oks
    assert f"ok    gpu-b: upstream http://127.0.0.1:{exposed.port} lists 2 models: qwen3:8b, mistral:7b" in oks
    assert f"ok    gpu-a: port {inside.port} is not open to other machines (it listens on loopback only)" in oks
    (fail,) = [f for f in findings if f.level == FAIL]
    assert fail.text.startswith(f"gpu-b: Ollama listens on 0.0.0.0:{exposed.port}: anyone on the LAN")


@pytest.mark.posix_only("sc.exe exists on Windows: here it cannot be started, as when Windows refuses to start it")
def test_a_service_manager_that_cannot_be_asked_is_a_warning_not_a_traceback() -> None:
    (finding,) = check_windows_service("guardproxy", "127.0.0.1", 11435)
    assert finding.level == WARN
    assert finding.text == 'cannot tell the state of Windows service "guardproxy" (sc.exe gave no answer)'
    assert "sc.exe query guardproxy" in finding.fix
