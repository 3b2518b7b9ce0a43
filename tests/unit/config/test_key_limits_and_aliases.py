"""[[keys]] max_num_ctx / max_output_tokens and the [aliases] table: read, and mistakes named by file, line
and field."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from guardproxy.config.load import parse_config
from guardproxy.config.model import ConfigError

TEXT = '''listen = "127.0.0.1:11435"

[[keys]]
name = "app"
key = "0123456789abcdefghij"
max_num_ctx = 8192
max_output_tokens = 1024

[aliases]
"gpt-4o-mini" = "llama3.2:3b"
"claude-3-5-haiku" = "qwen3:8b"
'''


def read(text: str) -> object:
    return parse_config(tomllib.loads(text), Path("/etc/gp.toml"), text)


def test_fields_and_aliases_are_read() -> None:
    cfg = read(TEXT)
    key = cfg.keys[0]  # type: ignore[attr-defined]
    assert (key.max_num_ctx, key.max_output_tokens) == (8192, 1024)
    assert cfg.aliases == (("gpt-4o-mini", "llama3.2:3b"), ("claude-3-5-haiku", "qwen3:8b"))  # type: ignore[attr-defined]


def test_absent_means_no_limit_and_no_alias() -> None:
    cfg = read(TEXT.split("max_num_ctx")[0])
    assert cfg.keys[0].max_num_ctx is None and cfg.keys[0].max_output_tokens is None  # type: ignore[attr-defined]
    assert cfg.aliases == ()  # type: ignore[attr-defined]


@pytest.mark.parametrize("old,new,where", [
    ("max_num_ctx = 8192", "max_num_ctx = 0", "/etc/gp.toml:6: keys[0].max_num_ctx: expected a whole number >= 1"),
    ("max_num_ctx = 8192", 'max_num_ctx = "8k"', "/etc/gp.toml:6: keys[0].max_num_ctx: expected a whole number"),
    ("max_output_tokens = 1024", "max_output_tokens = -1",
     "/etc/gp.toml:7: keys[0].max_output_tokens: expected a whole number >= 1"),
    ("max_output_tokens = 1024", "max_output_tokens = true",
     "/etc/gp.toml:7: keys[0].max_output_tokens: expected a whole number"),
    ('"gpt-4o-mini" = "llama3.2:3b"', '"gpt-4o-mini" = ""',
     "/etc/gp.toml:10: aliases.gpt-4o-mini: expected a model name in quotes"),
    ('"gpt-4o-mini" = "llama3.2:3b"', '"gpt-4o-mini" = 3',
     "/etc/gp.toml:10: aliases.gpt-4o-mini: expected a model name in quotes"),
    ('"claude-3-5-haiku" = "qwen3:8b"', '"claude-3-5-haiku" = "GPT-4o-mini"',
     "/etc/gp.toml:11: aliases.claude-3-5-haiku: expected a model that runs, not an alias"),
    ('"claude-3-5-haiku" = "qwen3:8b"', '"GPT-4O-MINI" = "qwen3:8b"',
     "/etc/gp.toml:11: aliases.GPT-4O-MINI: expected one alias per name"),
])
@pytest.mark.posix_only("the messages name the POSIX path /etc/gp.toml")
def test_mistakes_name_file_line_and_field(old: str, new: str, where: str) -> None:
    text = TEXT.replace(old, new)
    with pytest.raises(ConfigError) as e:
        read(text)
    assert str(e.value).startswith(where), str(e.value)


@pytest.mark.posix_only("the message names the POSIX path /etc/gp.toml")
def test_aliases_that_are_not_a_table() -> None:
    text = 'aliases = 5\n' + TEXT.split("[aliases]")[0]
    with pytest.raises(ConfigError) as e:
        read(text)
    assert str(e.value).startswith("/etc/gp.toml:1: aliases: expected a table"), str(e.value)
