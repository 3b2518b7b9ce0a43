"""The [cluster] table, $GUARDPROXY_REDIS_URL, and a key's token budget."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from guardproxy.config.load import cluster_address, parse_config
from guardproxy.config.model import Budget, Cluster, Config, ConfigError
from guardproxy.config.redis_url import RedisAddress
from guardproxy.config.values import parse_budget

BASE = {"keys": [{"name": "a", "key": "x" * 20}]}


@pytest.mark.parametrize("text,budget", [
    ("200000/day", Budget(200000, 86400.0, "day")), ("5000/h", Budget(5000, 3600.0, "h")),
    (" 1_000_000 / month", Budget(1000000, 30 * 86400.0, "month")), ("7/hour", Budget(7, 3600.0, "h")),
    ("9/d", Budget(9, 86400.0, "day")),
])
def test_parse_budget(text: str, budget: Budget) -> None:
    assert parse_budget(text) == budget and str(budget) == f"{budget.tokens}/{budget.unit}"


@pytest.mark.parametrize("bad", ["0/day", "10/min", "10/week", "day", "-5/h", 100, None])
def test_parse_budget_refuses(bad: object) -> None:
    with pytest.raises(ValueError, match="a token budget like"):
        parse_budget(bad)


def test_a_key_budget_and_its_mistake_named_by_line(tmp_path: Path) -> None:
    cfg = parse_config({"keys": [{"name": "a", "key": "x" * 20, "tokens": "100/h"}]}, None)
    assert cfg.keys[0].tokens == Budget(100, 3600.0, "h") and cfg.cluster is None
    text = '[[keys]]\nname = "a"\nkey = "' + "x" * 20 + '"\ntokens = "lots"\n'
    with pytest.raises(ConfigError, match=r"g.toml:4: keys\[0\].tokens: expected a token budget like"):
        parse_config(tomllib.loads(text), tmp_path / "g.toml", text)


def test_cluster_defaults_and_values() -> None:
    assert parse_config({**BASE, "cluster": {"redis": "redis://10.0.0.2:6379/1"}}, None).cluster == \
        Cluster("redis://10.0.0.2:6379/1", "guardproxy:", 15.0, 0.05, "local")
    c = parse_config({**BASE, "cluster": {"redis": "rediss://:pw@r.example:6380/0", "key_prefix": "gp1:",
                                          "lease_ttl": "5s", "op_timeout": "20ms", "on_redis_error": "closed"}},
                     None).cluster
    assert c == Cluster("rediss://:pw@r.example:6380/0", "gp1:", 5.0, 0.02, "closed")


@pytest.mark.parametrize("table,message", [
    ({"redis": "http://h"}, r"cluster.redis: expected a URL like"),
    ({"redis": "redis://h/x"}, r"cluster.redis: expected a URL like .*database number"),
    ({"on_redis_error": "ignore"}, r'cluster.on_redis_error: expected one of "local", "open", "closed"'),
    ({"lease_ttl": "10ms"}, r"cluster.lease_ttl: expected a duration of at least 100ms"),
    ({"op_timeout": "1min"}, r"cluster.op_timeout: expected a duration between 1ms and 10s"),
    ({"servers": []}, r"cluster.servers: expected one of the known fields"),
    ({"redis": "redis+cluster://10.0.0.5:6379"}, r"cluster.redis: .*Redis Cluster is not supported"),
    ({"sentinels": ["10.0.0.7"]}, r"cluster.sentinels\[0\]: expected a Sentinel as HOST:PORT"),
    ({"sentinels": ["10.0.0.7:26379"]}, r"cluster.sentinel_master: expected the name the Sentinels monitor"),
    ({"sentinel_master": "mymaster"}, r"cluster.sentinels: expected the Sentinels to ask"),
    ({"redis": "redis://h", "tls_server_name": "r.example"}, r"cluster.tls_server_name: expected set only with a rediss"),
    ({"redis": "rediss://h", "tls_ca": "/nonexistent/ca.pem"}, r"cluster.tls_ca: expected a readable PEM file"),
])
def test_cluster_mistakes(table: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({**BASE, "cluster": table}, None)


def test_the_environment_gives_the_url_and_keeps_a_password_out_of_the_file(tmp_path: Path) -> None:
    def config(url: str) -> Config:
        return parse_config({**BASE, "cluster": {"redis": url}}, tmp_path / "g.toml")
    cluster = config("redis://127.0.0.1:6379/0")
    assert cluster_address(cluster, {}) == RedisAddress("127.0.0.1")
    env = {"GUARDPROXY_REDIS_URL": "redis://:s3cret@10.0.0.9:6380/2"}
    assert cluster_address(cluster, env) == RedisAddress("10.0.0.9", 6380, False, None, "s3cret", 2)
    assert cluster_address(config(""), env).host == "10.0.0.9"
    with pytest.raises(ConfigError, match=r"cluster.redis: expected a URL .*GUARDPROXY_REDIS_URL") as e:
        cluster_address(config(""), {})
    assert str(e.value).startswith(f"{tmp_path / 'g.toml'}: cluster.redis: ")  # the file, like every config error
    with pytest.raises(ConfigError, match=r"GUARDPROXY_REDIS_URL \(environment variable\): expected a URL"):
        cluster_address(cluster, {"GUARDPROXY_REDIS_URL": "redis://:pw@h/notadb"})


def test_sentinels_and_tls_files_reach_the_address(tmp_path: Path) -> None:
    for name in ("ca.pem", "client.pem", "client.key"):
        (tmp_path / name).write_text("-")
    config = parse_config({**BASE, "cluster": {
        "redis": "rediss://gate:pw@ignored:1/3", "sentinels": ["10.0.0.7:26379", "[fd00::8]:26380"],
        "sentinel_master": "mymaster", "tls_ca": "ca.pem", "tls_cert": "client.pem", "tls_key": str(tmp_path / "client.key"),
        "tls_server_name": "redis.internal"}}, tmp_path / "g.toml")
    a = cluster_address(config, {})
    assert a.sentinels == (("10.0.0.7", 26379), ("fd00::8", 26380)) and a.sentinel_master == "mymaster"
    assert (a.username, a.password, a.db, a.tls) == ("gate", "pw", 3, True)
    assert (a.tls_ca, a.tls_cert, a.tls_key, a.tls_server_name) == (
        str(tmp_path / "ca.pem"), str(tmp_path / "client.pem"), str(tmp_path / "client.key"), "redis.internal")
    assert a.url == "rediss://gate:***@mymaster/3 (Sentinel 10.0.0.7:26379,[fd00::8]:26380)"
    # With Sentinels, the URL may be left out: they say where the primary is.
    bare = parse_config({**BASE, "cluster": {"sentinels": ["10.0.0.7:26379"], "sentinel_master": "m"}}, None)
    assert cluster_address(bare, {}).sentinels == (("10.0.0.7", 26379),)
