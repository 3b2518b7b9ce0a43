"""CORS decisions: preflights, exact origins, the wildcard."""

from __future__ import annotations

from guardproxy.config.model import Cors
from guardproxy.decisions.cors import CorsPolicy, is_preflight
from support.samples import head


def test_cors_preflight_decisions() -> None:
    c = CorsPolicy(Cors(("https://app.example",), 600))
    ok = head("/api/chat", "OPTIONS", Origin="https://app.example", Access_Control_Request_Method="POST",
              Access_Control_Request_Headers="content-type, x-api-key, x-stainless-os")
    assert is_preflight(ok)
    h = dict(c.preflight_headers(ok))
    assert h["Access-Control-Allow-Origin"] == "https://app.example"
    assert "POST" in h["Access-Control-Allow-Methods"]
    assert h["Access-Control-Allow-Headers"] == "Content-Type, X-API-Key, Authorization, x-stainless-os"
    assert h["Access-Control-Max-Age"] == "600" and "Origin" in h["Vary"]
    assert "Access-Control-Allow-Credentials" not in h
    for origin in ("https://evil.example", "null", "https://app.example.evil", "http://app.example"):
        bad = head("/api/chat", "OPTIONS", Origin=origin, Access_Control_Request_Method="POST")
        assert not any(k.startswith("Access-Control") for k, _ in c.preflight_headers(bad))


def test_cors_wildcard_never_with_credentials() -> None:
    c = CorsPolicy(Cors(("*",)))
    h = dict(c.response_headers(b"https://any.example"))
    assert h["Access-Control-Allow-Origin"] == "*" and "Access-Control-Allow-Credentials" not in h
    assert c.response_headers(b"null") == [("Vary", "Origin")]
    assert CorsPolicy(Cors()).response_headers(b"https://x") == []
