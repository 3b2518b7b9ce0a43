"""HTTPS on the listen port, with certificates made by trustme."""

from __future__ import annotations

import asyncio
import os
import ssl
from pathlib import Path
from typing import Callable

import pytest
import trustme

from conftest import KEY, Proxy, start_proxy
from guardproxy.config.load import parse_config
from guardproxy.config.model import ConfigError, Tls
from guardproxy.testing.fake_ollama import FakeOllama
from support.raw_http import read_response, request_bytes


def write_pair(ca: trustme.CA, directory: Path, name: str = "127.0.0.1") -> Tls:
    cert = ca.issue_cert(name, "localhost")
    cert_path, key_path = directory / "fullchain.pem", directory / "privkey.pem"
    cert.private_key_pem.write_to_path(str(key_path))
    cert_path.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    return Tls(cert_path, key_path)


async def fetch_tls(port: int, ctx: ssl.SSLContext, target: str, headers: dict[str, str] | None = None):
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1")
    try:
        writer.write(request_bytes("GET", target, headers={**(headers or {}), "Connection": "close"}))
        resp = await asyncio.wait_for(read_response(reader), 5)
        return resp, writer.get_extra_info("ssl_object")
    finally:
        writer.close()


async def test_https_serves_health_and_proxies(fake: FakeOllama, tmp_path: Path) -> None:
    ca = trustme.CA()
    tls = write_pair(ca, tmp_path)
    p = await start_proxy(fake.port, tmp_path, tls=tls)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    try:
        r, sslobj = await fetch_tls(p.port, client, "/health")
        assert (r.status, r.body) == (200, b"OK")
        assert sslobj.version() in ("TLSv1.2", "TLSv1.3")
        r, _ = await fetch_tls(p.port, client, "/api/version", {"X-API-Key": KEY})
        assert r.status == 200
        assert fake.requests[-1].header("x-forwarded-proto") == "https"
        assert fake.requests[-1].header("x-api-key") is None
    finally:
        await p.server.stop(grace=0)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
async def test_old_tls_and_plain_http_are_refused(fake: FakeOllama, tmp_path: Path) -> None:
    ca = trustme.CA()
    p = await start_proxy(fake.port, tmp_path, tls=write_pair(ca, tmp_path))
    try:
        assert p.server.tls is not None
        assert p.server.tls.context.minimum_version == ssl.TLSVersion.TLSv1_2
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ca.configure_trust(old)
        try:
            old.minimum_version = ssl.TLSVersion.TLSv1
            old.maximum_version = ssl.TLSVersion.TLSv1_1
        except (ValueError, ssl.SSLError):
            pytest.skip("this OpenSSL cannot even offer TLS 1.1")
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await fetch_tls(p.port, old, "/health")
        # Plain HTTP on the TLS port gets no HTTP answer, and no key crosses in clear.
        reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
        writer.write(request_bytes("GET", "/health"))
        try:
            data = await asyncio.wait_for(reader.read(), 5)
        except ConnectionError:
            data = b""
        assert not data.startswith(b"HTTP/1.1 200")
        writer.close()
        assert fake.connections_opened == 0
    finally:
        await p.server.stop(grace=0)


async def gate_before_a_renewal(fake: FakeOllama, tmp_path: Path) -> tuple[Proxy, Callable[[], None], ssl.SSLContext]:
    """A gate serving one CA's certificate; renew() writes another CA's to the same paths (as a
    renewal does); the context trusts the new CA only."""
    old_ca, new_ca = trustme.CA(), trustme.CA()
    tls = write_pair(old_ca, tmp_path)
    p = await start_proxy(fake.port, tmp_path, tls=tls)
    trusts_new = ssl.create_default_context()
    new_ca.configure_trust(trusts_new)

    def renew() -> None:
        write_pair(new_ca, tmp_path)
        st = os.stat(tls.cert)
        os.utime(tls.cert, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    return p, renew, trusts_new


async def test_certificate_files_reload_when_they_change(fake: FakeOllama, tmp_path: Path) -> None:
    p, renew, trusts_new = await gate_before_a_renewal(fake, tmp_path)
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            await fetch_tls(p.port, trusts_new, "/health")
        renew()
        assert p.server.tls is not None and p.server.tls.reload_if_changed()
        r, _ = await fetch_tls(p.port, trusts_new, "/health")
        assert r.status == 200
    finally:
        await p.server.stop(grace=0)


async def test_config_reload_takes_renewed_certificate_at_once(fake: FakeOllama, tmp_path: Path) -> None:
    p, renew, trusts_new = await gate_before_a_renewal(fake, tmp_path)
    try:
        renew()
        p.server.apply_config(p.server.config)  # what SIGHUP or a saved config does
        r, _ = await fetch_tls(p.port, trusts_new, "/health")
        assert r.status == 200
    finally:
        await p.server.stop(grace=0)


def test_tls_config_errors_name_the_field(tmp_path: Path) -> None:
    base = {"keys": [{"name": "a", "key": "x" * 20}]}
    with pytest.raises(ConfigError, match=r"tls: expected both cert"):
        parse_config({**base, "tls": {"cert": "a.pem"}}, tmp_path / "g.toml")
    with pytest.raises(ConfigError, match=r"tls.cert: expected a readable PEM file"):
        parse_config({**base, "tls": {"cert": "missing.pem", "key": "k.pem"}}, tmp_path / "g.toml")
    (tmp_path / "c.pem").write_text("x")
    (tmp_path / "k.pem").write_text("x")
    cfg = parse_config({**base, "tls": {"cert": "c.pem", "key": "k.pem"}}, tmp_path / "g.toml")
    assert cfg.tls is not None and cfg.tls.cert == tmp_path / "c.pem"  # relative to the config file


async def test_silent_tls_client_is_dropped_at_the_head_deadline(fake: FakeOllama, tmp_path: Path) -> None:
    from guardproxy.config.model import Timeouts
    p = await start_proxy(fake.port, tmp_path, tls=write_pair(trustme.CA(), tmp_path), timeouts=Timeouts(header=0.3))
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", p.port)  # TCP only, no ClientHello
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
    finally:
        await p.server.stop(grace=0)
