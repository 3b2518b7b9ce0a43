"""Sample inputs several test files share: a config using every policy field, request heads."""

from __future__ import annotations

import tomllib
from pathlib import Path

from guardproxy.config.load import parse_config
from guardproxy.config.model import Config
from guardproxy.wire.heads import RequestHead, parse_request_head

FULL = """\
[[keys]]
name = "vercel-app"
key = "0123456789abcdef-plain"
admin = false
models = ["qwen3:*", "llama3.2"]
rate = "30/min"
max_concurrent = 2
expires = 2027-01-31

[cors]
origins = ["https://sysofti.com"]
max_age = 600

[limits]
per_ip = "5/s"
max_concurrent = 8
queue_timeout = "30s"
trusted_proxies = ["10.0.0.0/8", "::1"]

[ban]
after_failures = 20
window = "10min"
duration = "15min"
"""


def load(text: str) -> Config:
    return parse_config(tomllib.loads(text), Path("g.toml"), text)


def head(target: str = "/api/tags", method: str = "GET", **headers: str) -> RequestHead:
    lines = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in headers.items())
    return parse_request_head(f"{method} {target} HTTP/1.1\r\nHost: x\r\n{lines}\r\n".encode())
