"""[[upstreams]] and [routing]: several Ollama hosts, and mistakes named by file, line and field."""

from __future__ import annotations

import pytest

from guardproxy.config.model import ConfigError, Routing, Upstream, UpstreamHost
from support.samples import load

KEYS = '\n[[keys]]\nname = "a"\nkey = "xxxxxxxxxxxxxxxxxxxx"\n'

TWO = """\
[[upstreams]]
name = "gpu-a"
url = "http://10.0.0.5:11434"
max_concurrent = 4
weight = 1
models = ["llama3.2:*"]

[[upstreams]]
name = "gpu-b"
url = "http://10.0.0.6:11434"
max_concurrent = 2
weight = 2.5

[routing]
health_interval = "5s"
max_attempts = 3
""" + KEYS


def test_two_hosts_and_routing() -> None:
    cfg = load(TWO)
    assert cfg.upstreams == (
        UpstreamHost("gpu-a", Upstream("10.0.0.5", 11434), 4, 1.0, ("llama3.2:*",)),
        UpstreamHost("gpu-b", Upstream("10.0.0.6", 11434), 2, 2.5, None))
    assert cfg.hosts() == cfg.upstreams
    assert cfg.upstream == Upstream("10.0.0.5", 11434)  # the first host, for what reads one
    assert cfg.routing == Routing(health_interval=5.0, max_attempts=3)


def test_the_single_upstream_is_one_host_named_by_its_address() -> None:
    cfg = load('upstream = "http://127.0.0.1:11434"\n' + KEYS)
    assert cfg.upstreams == () and cfg.routing == Routing(health_interval=5.0, max_attempts=2)
    assert cfg.hosts() == (UpstreamHost("127.0.0.1:11434", Upstream("127.0.0.1", 11434)),)


@pytest.mark.parametrize("text,line,message", [
    ('upstream = "http://127.0.0.1:11434"\n' + TWO, 1,
     "upstream: expected either `upstream = \"...\"` or [[upstreams]] tables, not both"),
    (TWO.replace('name = "gpu-b"', 'name = "gpu-a"'), 9, 'upstreams[1].name: expected a unique name; "gpu-a"'),
    (TWO.replace('name = "gpu-b"', 'name = "gpu b"'), 9, "upstreams[1].name: expected a name of letters"),
    (TWO.replace("http://10.0.0.6", "https://10.0.0.6"), 10, "upstreams[1].url: expected an http:// URL"),
    (TWO.replace("max_concurrent = 2\n", ""), 8, "upstreams[1]: expected max_concurrent = <the generations"),
    (TWO.replace("max_concurrent = 2", "max_concurrent = 0"), 11, "upstreams[1].max_concurrent: expected a whole"),
    (TWO.replace("weight = 2.5", "weight = 0"), 12, "upstreams[1].weight: expected a number above 0"),
    (TWO.replace("weight = 2.5", 'weigth = 2.5'), 12, "upstreams[1].weigth: expected one of the known fields"),
    (TWO.replace('"5s"', '"50ms"'), 15, "routing.health_interval: expected 0 (no health checks) or at least"),
    (TWO.replace("max_attempts = 3", "max_attempts = 0"), 16, "routing.max_attempts: expected a whole number >= 1"),
])
def test_mistakes_name_the_file_line_and_field(text: str, line: int, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(text)
    assert str(e.value).startswith(f"g.toml:{line}: {message}"), str(e.value)


def test_health_checks_can_be_turned_off() -> None:
    assert load(TWO.replace('"5s"', "0")).routing.health_interval == 0.0
