"""Checks on a request: the loopback Host/Origin rules, and the JSON body's fields."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from .exchange import BadRequest


# -- loopback protection, mirroring what Ollama does when bound to loopback ---


_LOCAL_ORIGIN_HOSTS = frozenset({"localhost", "127.0.0.1", "0.0.0.0"})
_ANY_HOST_ORIGIN_SCHEMES = frozenset({"app", "file", "tauri"})


def host_is_local(host_header: str) -> bool:
    value = host_header.strip()
    if not value:
        return True
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return False
        host = value[1:end]
    elif value.count(":") == 1:
        host = value.split(":", 1)[0]
    else:
        # Either no port, or a bare IPv6 literal that cannot carry one.
        host = value
    host = host.lower()
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_unspecified


def origin_is_local(origin: str) -> bool:
    scheme, sep, rest = origin.strip().partition("://")
    if not sep:
        return False
    scheme = scheme.lower()
    if scheme in _ANY_HOST_ORIGIN_SCHEMES:
        return True
    if scheme not in ("http", "https"):
        return False
    authority = rest.split("/", 1)[0]
    if "@" in authority:
        return False
    host, _, port = authority.partition(":")
    if port and not port.isdigit():
        return False
    return host.lower() in _LOCAL_ORIGIN_HOSTS


# -- body fields --------------------------------------------------------

def parse_json_body(body: bytes) -> dict[str, Any]:
    if not body.strip():
        raise BadRequest("missing request body")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"invalid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    return data


def opt_bool(data: dict[str, Any], key: str, default: bool) -> bool:
    value = data.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise BadRequest(f"{key} must be a boolean")
    return value


def opt_number(data: dict[str, Any], key: str, default: float) -> float:
    value = data.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise BadRequest(f"{key} must be a non-negative number")
    return float(value)


def opt_count(value: Any, name: str, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRequest(f"{name} must be an integer")
    # Ollama treats negative num_predict as "until done"; here that means default.
    return int(value) if value >= 0 else default


def require_model(data: dict[str, Any]) -> str:
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("model is required")
    return model
