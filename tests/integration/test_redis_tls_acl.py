"""Redis over TLS with a private CA (and a client certificate), and a gate's own ACL user.

A real `redis-server --tls-port` with a CA made here (trustme); a real ACL user with exactly the
rules `gate_acl` gives, under which gates share their limits; a user short of one permission is
reported once, clearly, not as connect timeouts.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from conftest import KEY
from guardproxy.config.model import Rate, TrafficLimits
from guardproxy.config.redis_url import RedisAddress
from guardproxy.config.values import parse_budget
from guardproxy.engine.state.cluster import gate_acl
from guardproxy.engine.state.resp import RedisClient, RedisRefused
from guardproxy.testing.fake_ollama import FakeOllama
from support.bodies import gen_body
from support.gates import gates, keys, open_stream
from support.polling import until
from support.raw_http import fetch
from support.redis_server import TLSFiles, redis_server

LAPTOP = {"X-API-Key": KEY}


def private_ca(workdir: Path, *, client_cert: bool) -> tuple[TLSFiles, dict[str, str]]:
    """A CA, a server certificate for "redis.internal" (not the address dialled), and a client certificate."""
    import trustme
    ca = trustme.CA()
    server = ca.issue_cert("redis.internal")
    client = ca.issue_cert("gate.internal")
    paths = {name: workdir / f"{name}.pem" for name in ("ca", "server", "server-key", "client", "client-key")}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    server.cert_chain_pems[0].write_to_path(str(paths["server"]))
    server.private_key_pem.write_to_path(str(paths["server-key"]))
    client.cert_chain_pems[0].write_to_path(str(paths["client"]))
    client.private_key_pem.write_to_path(str(paths["client-key"]))
    context = ssl.create_default_context(cafile=str(paths["ca"]))
    context.check_hostname = False   # the test's own connection dials 127.0.0.1
    context.load_cert_chain(str(paths["client"]), str(paths["client-key"]))
    files = TLSFiles(paths["server"], paths["server-key"], paths["ca"], context)
    options = {"tls_ca": str(paths["ca"]), "tls_server_name": "redis.internal"}
    if client_cert:
        options |= {"tls_cert": str(paths["client"]), "tls_key": str(paths["client-key"])}
    return files, options


async def test_tls_with_a_private_ca_a_server_name_and_a_client_certificate(fake: FakeOllama, tmp_path: Path) -> None:
    files, options = private_ca(tmp_path, client_cert=True)
    async with redis_server(tmp_path, tls=files, args=["--tls-auth-clients", "yes"]) as server:
        url = server.url()
        assert url.startswith("rediss://")
        base = RedisAddress.from_url(url)
        # Each piece is needed: the CA (not in the system's store), the name on the certificate,
        # the client certificate the server asks for.
        for missing in ("tls_ca", "tls_server_name", "tls_cert"):
            partial = {k: v for k, v in options.items() if k != missing and not (missing == "tls_cert" and k == "tls_key")}
            async with RedisClient(RedisAddress(**{**base.__dict__, **partial}), backoff=(0.01, 0.1)) as client:
                assert not await client.wait_connected(0.5), missing
                assert "CERTIFICATE" in str(client.last_error).upper(), client.last_error
        # All of them: gates share their limits over TLS.
        async with gates(fake.port, tmp_path, url, 2, cluster=options, keys=keys(rate=Rate(3, 60.0))) as gs:
            statuses = [(await fetch(gs[i % 2].port, "GET", "/api/version", headers=LAPTOP)).status for i in range(4)]
            assert statuses == [200, 200, 200, 429]
            assert all(g.state.fallbacks == 0 and g.state.errors == 0 for g in gs)


async def test_a_gate_runs_under_its_own_acl_user(fake: FakeOllama, tmp_path: Path) -> None:
    user = ["--user", "gate", "on", ">gate-pw", *gate_acl("t:").split()]
    async with redis_server(tmp_path, password="admin-pw", args=user) as server:
        url = f"redis://gate:gate-pw@{server.host}:{server.port}/0"
        async with gates(fake.port, tmp_path, url, 2, lease_ttl=0.6, keys=keys(rate=Rate(4, 60.0), max_concurrent=1,
                                                                               tokens=parse_budget("1000000/h")),
                         limits=TrafficLimits(queue_timeout=0.3)) as gs:
            await until(lambda: all(g.state.instances == 2 for g in gs))
            reader, writer = await open_stream(gs[0].port, LAPTOP, gen_body(tokens=100000, delay=0.01))
            try:
                assert (await fetch(gs[1].port, "POST", "/api/generate", gen_body(tokens=2), LAPTOP)).status == 503
            finally:
                writer.transport.abort()
            await until(lambda: all(g.state.occupancy.total == 0 for g in gs))
            # Freed on the one gate, published, heard on the other (SUBSCRIBE and PUBLISH allowed).
            assert (await fetch(gs[1].port, "POST", "/api/generate", gen_body(tokens=2), LAPTOP)).status == 200
            assert (await fetch(gs[0].port, "GET", "/api/version", headers=LAPTOP)).status == 200
            assert (await fetch(gs[1].port, "GET", "/api/version", headers=LAPTOP)).status == 429   # the 5th this minute, of 4
            assert all(g.state.errors == 0 and g.state.fallbacks == 0 for g in gs), [g.said for g in gs]
            assert all(g.said == "" for g in gs)
            assert await server.command("ACL", "LOG") == []   # nothing was refused


@pytest.mark.parametrize("taken_away,said", [
    ("-subscribe", "refuses the subscription to t:freed (NOPERM"),
    ("-info", "refuses to serve this gate (NOPERM"),
])
async def test_a_missing_permission_is_reported_once_and_clearly(fake: FakeOllama, tmp_path: Path,
                                                                 taken_away: str, said: str) -> None:
    user = ["--user", "gate", "on", ">gate-pw", *gate_acl("t:").split(), taken_away]
    async with redis_server(tmp_path, password="admin-pw", args=user) as server:
        url = f"redis://gate:gate-pw@{server.host}:{server.port}/0"
        async with gates(fake.port, tmp_path, url, 1) as (g,):
            await until(lambda: said in g.said)
            link = g.state.subscriber if taken_away == "-subscribe" else g.state.client
            await until(lambda: link.failed_connects >= 2, timeout=15)   # tried again (after the longest step) ...
            assert g.said.count(said) == 1, g.said                          # ... and said once
            assert isinstance(link.last_error, RedisRefused) and "timed out" not in g.said.lower()
