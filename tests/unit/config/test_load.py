"""Reading a config: every table, defaults, and mistakes named by file, line and field."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from guardproxy.config.load import parse_config
from guardproxy.config.model import Ban, ConfigError, Cors, Rate, ServerLimits
from guardproxy.config.values import parse_size
from support.samples import FULL, load


BASE = {"keys": [{"name": "a", "key": "x" * 20}]}


def test_defaults() -> None:
    cfg = parse_config(BASE, None)
    assert cfg.server == ServerLimits(max_body=64 * 1024 * 1024, max_connections=10000,
                                      max_connections_per_ip=256, max_headers=100)
    assert (cfg.timeouts.body, cfg.timeouts.write, cfg.timeouts.first_byte) == (30.0, 60.0, 300.0)
    assert cfg.tls is None


def test_values() -> None:
    cfg = parse_config({**BASE, "server": {"max_body": "1MiB", "max_headers": 50},
                        "timeouts": {"first_byte": "10min", "write": 5}}, None)
    assert cfg.server.max_body == 1024 * 1024 and cfg.server.max_headers == 50
    assert cfg.timeouts.first_byte == 600.0 and cfg.timeouts.write == 5.0
    assert parse_size(7) == 7 and parse_size("2 KB") == 2000


@pytest.mark.parametrize("table,message", [
    ({"max_body": "lots"}, r"server.max_body: expected a size like"),
    ({"max_connections": 0}, r"server.max_connections: expected a whole number of at least 1"),
    ({"max_headers": True}, r"server.max_headers: expected a whole number"),
    ({"max_conns": 5}, r"server.max_conns: expected one of the known fields"),
])
def test_mistakes_name_the_field(tmp_path: Path, table: dict, message: str) -> None:
    text = "[server]\n" + "".join(f"{k} = {v!r}\n".replace("'", '"').replace("True", "true") for k, v in table.items())
    with pytest.raises(ConfigError, match=message) as e:
        parse_config({**BASE, "server": table}, tmp_path / "g.toml", text)
    assert str(e.value).startswith(f"{tmp_path / 'g.toml'}:2: ")


@pytest.mark.parametrize("old,new,where", [
    ("", "[timeouts]\nread = nan", "g.toml:26: timeouts.read"), ("", "[cluster]\nlease_ttl = nan", "g.toml:26: cluster.lease_ttl"),
    ("", "[routing]\nhealth_interval = inf", "g.toml:26: routing.health_interval"),
    ('queue_timeout = "30s"', "queue_timeout = inf", "g.toml:17: limits.queue_timeout"),
    ('window = "10min"', "window = -inf", "g.toml:22: ban.window"),
])
def test_durations_are_finite(old: str, new: str, where: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(FULL.replace(old, new) if old else f"{FULL}\n{new}\n")
    assert str(e.value).startswith(f"{where}: expected a duration") and "\n" not in str(e.value)


def test_env_key_adds_a_key_named_env() -> None:
    cfg = parse_config({}, None, env_key="gp_abcdefghijklmnop")
    assert [k.name for k in cfg.keys] == ["env"]


# --- the policy tables ----------------------------------------------------------------

def test_full_policy_config_reads() -> None:
    c = load(FULL)
    (k,) = c.keys
    assert (k.admin, k.models, k.rate, k.max_concurrent, k.expires) == \
        (False, ("qwen3:*", "llama3.2"), Rate(30, 60.0), 2, date(2027, 1, 31))
    assert c.cors == Cors(("https://sysofti.com",), 600)
    assert c.limits.per_ip == Rate(5, 1.0) and c.limits.max_concurrent == 8
    assert c.ban == Ban(20, 600.0, 900.0)


@pytest.mark.parametrize("old,new,where", [
    ('rate = "30/min"', 'rate = "lots"', 'g.toml:6: keys[0].rate: expected a rate like "30/min"'),
    ("admin = false", 'admin = "no"', "g.toml:4: keys[0].admin: expected true or false"),
    ("max_concurrent = 2", "max_concurrent = 0", "g.toml:7: keys[0].max_concurrent: expected a whole number >= 1"),
    ("expires = 2027-01-31", 'expires = "soon"', "g.toml:8: keys[0].expires: expected a date"),
    ('origins = ["https://sysofti.com"]', 'origins = ["https://sysofti.com/app"]', "g.toml:11: cors.origins: expected exact origins"),
    ('"10.0.0.0/8"', '"10.0.0.0/33"', "g.toml:18: limits.trusted_proxies: expected CIDRs"),
    ('window = "10min"', 'window = "a while"', "g.toml:22: ban.window: expected a duration"),
    ("[ban]", "[bans]", "g.toml:20: bans: expected one of the known fields"),
])
def test_config_mistakes_are_one_line_with_file_line_field(old: str, new: str, where: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(FULL.replace(old, new))
    assert str(e.value).startswith(where) and "\n" not in str(e.value)


def test_a_mistake_under_a_commented_header_of_the_template_names_its_line() -> None:
    from guardproxy.config.write import initial_config_text
    text = initial_config_text("gp_" + "k" * 40).replace('duration = "15min"', 'duration = "a while"')
    line = text.split("\n").index('duration = "a while"') + 1
    assert "[ban]   " in text  # the header carries a comment
    with pytest.raises(ConfigError, match=rf"^g.toml:{line}: ban.duration: expected a duration"):
        load(text)


@pytest.mark.parametrize("header", ['[ "ban" ]', "['ban']  # bans", '[ban]\t#'])
def test_headers_are_found_quoted_spaced_and_commented(header: str) -> None:
    text = FULL.replace("[ban]", header).replace('window = "10min"', 'window = "a while"')
    with pytest.raises(ConfigError, match=r"^g.toml:22: ban.window: expected a duration"):
        load(text)


def test_line_numbers_count_newlines_only() -> None:
    # A string may hold U+2028 or \x85: they end no line of the file.
    text = FULL.replace('name = "vercel-app"', 'name = "vercel\u2028app\x85"')
    with pytest.raises(ConfigError, match=r"^g.toml:22: ban.window: expected a duration"):
        load(text.replace('window = "10min"', 'window = "a while"'))
    bad_key = "\n[[keys]]\nname = \"two\"\nkey = \"0123456789abcdef-other\"\nrate = \"lots\"\n"
    with pytest.raises(ConfigError, match=r"^g.toml:28: keys\[1\].rate: expected a rate"):
        load(text + bad_key)


def test_docs_policies_example_config_is_valid() -> None:
    import re
    readme = (Path(__file__).resolve().parents[3] / "docs" / "security.md").read_text(encoding="utf-8")
    block = re.search(r"```toml\n(.*?)```", readme[readme.index("## Policies"):], re.S).group(1)
    c = load(block)
    assert [k.admin for k in c.keys] == [True, False] and c.limits.max_concurrent == 8 and c.ban.after_failures == 20


# --- key lifecycle fields -------------------------------------------------------------------

LIFECYCLE = FULL.replace('expires = 2027-01-31\n', 'expires = 2027-01-31\nrevoked = 2026-11-29\n'
                         'previous_key_sha256 = "' + "ab" * 32 + '"\nprevious_valid_until = 2026-11-30T12:00:00Z\n')


def test_lifecycle_fields_read() -> None:
    from datetime import datetime, timezone
    (k,) = load(LIFECYCLE).keys
    assert k.revoked == date(2026, 11, 29) and k.previous_sha256 == bytes.fromhex("ab" * 32)
    assert k.previous_valid_until == datetime(2026, 11, 30, 12, tzinfo=timezone.utc)
    (plain,) = load(FULL).keys
    assert (plain.revoked, plain.previous_sha256, plain.previous_valid_until) == (None, None, None)


@pytest.mark.parametrize("old,new,where", [
    ("revoked = 2026-11-29", 'revoked = "yes"', 'g.toml:9: keys[0].revoked: expected a date like 2026-11-29'),
    ('previous_key_sha256 = "' + "ab" * 32 + '"', 'previous_key_sha256 = "abc"',
     "g.toml:10: keys[0].previous_key_sha256: expected 64 hexadecimal"),
    ("previous_valid_until = 2026-11-30T12:00:00Z", "previous_valid_until = 2026-11-30T12:00:00",
     "g.toml:11: keys[0].previous_valid_until: expected a UTC time like 2026-11-30T12:00:00Z"),
    ("previous_valid_until = 2026-11-30T12:00:00Z\n", "",
     "g.toml:1: keys[0]: expected previous_key_sha256 and previous_valid_until together"),
])
def test_lifecycle_mistakes_name_file_line_field(old: str, new: str, where: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(LIFECYCLE.replace(old, new))
    assert str(e.value).startswith(where), str(e.value)
