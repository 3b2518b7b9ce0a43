"""Helpers shared by test_routing.py and test_host_health.py."""

from __future__ import annotations

from typing import Any, Sequence


from guardproxy.decisions.routing import (Host, Hosts, Request, Verdict, choose)

NOW = 100.0


def entry(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "model": name, **extra}


def host(name: str, models: list[str] | None = None, loaded: Sequence[str] = (), in_flight: int = 0,
         max_concurrent: int = 4, weight: float = 1.0, patterns: tuple[str, ...] | None = None) -> Host:
    h = Host(name, max_concurrent=max_concurrent, weight=weight, patterns=patterns)
    if models is not None:
        h.set_tags([entry(m) for m in models])
    h.set_ps([entry(m) for m in loaded])
    h.in_flight = in_flight
    return h


def pick(hosts: list[Host] | Hosts, turn: int = 0, now: float = NOW, **req: Any) -> Host | Verdict:
    pool = hosts if isinstance(hosts, Hosts) else Hosts(hosts)
    return choose(pool, Request(**req), now, turn)


def name(choice: Host | Verdict) -> str:
    assert isinstance(choice, Host), choice
    return choice.name
