"""The TLS context and its reload when certificate files change (handshakes in memory, no sockets)."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import pytest
import trustme

from guardproxy.config.model import Tls
from guardproxy.engine.tls import CertReloader, server_context


def pair(ca: trustme.CA, directory: Path, name: str) -> Tls:
    cert = ca.issue_cert(name)
    tls = Tls(directory / "fullchain.pem", directory / "privkey.pem")
    cert.private_key_pem.write_to_path(str(tls.key))
    cert.cert_chain_pems[0].write_to_path(str(tls.cert))
    for blob in cert.cert_chain_pems[1:]:
        blob.write_to_path(str(tls.cert), append=True)
    return tls


def served_name(ctx: ssl.SSLContext, ca: trustme.CA, name: str) -> str:
    """Shake hands through memory BIOs; the subject name of the certificate the server sent."""
    client = ssl.create_default_context()
    ca.configure_trust(client)
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client.wrap_bio(c_in, c_out, server_hostname=name)
    s = ctx.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for side in (c, s):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    cert = c.getpeercert()
    assert cert is not None
    return ",".join(str(value) for kind, value in cert["subjectAltName"] if kind == "DNS")


def test_modern_settings_only(tmp_path: Path) -> None:
    ctx = server_context(pair(trustme.CA(), tmp_path, "a.example"))
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.options & ssl.OP_NO_COMPRESSION


def test_renewed_files_are_served_and_a_broken_pair_keeps_the_old(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    ca = trustme.CA()
    tls = pair(ca, tmp_path, "old.example")
    reloader = CertReloader(tls)
    assert served_name(reloader.context, ca, "old.example") == "old.example"
    assert not reloader.reload_if_changed()  # nothing changed
    pair(ca, tmp_path, "new.example")
    stamp = os.stat(tls.cert).st_mtime_ns + 1_000_000_000
    os.utime(tls.cert, ns=(stamp, stamp))
    assert reloader.reload_if_changed()
    assert served_name(reloader.context, ca, "new.example") == "new.example"
    tls.key.write_text("not a key")
    os.utime(tls.key, ns=(stamp + 10**9, stamp + 10**9))
    assert not reloader.reload_if_changed()
    (said,) = [r for r in caplog.records if "keeping the old certificate" in r.getMessage()]
    assert said.levelname == "WARNING"
    assert served_name(reloader.context, ca, "new.example") == "new.example"
