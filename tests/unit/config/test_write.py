"""Writing configs: new keys, the fresh-config template, appending without touching the rest."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from guardproxy.config.load import load_config
from guardproxy.config.model import ConfigError
from guardproxy.config.write import append_key, create_config, generate_key, hash_key


def test_generated_keys_are_long_and_unique() -> None:
    keys = {generate_key() for _ in range(100)}
    assert len(keys) == 100 and all(len(k) >= 46 for k in keys)


def test_create_then_append_roundtrip(tmp_path: Path) -> None:
    path = tmp_path / "g.toml"
    k1, k2 = generate_key(), generate_key()
    create_config(path, k1)
    with pytest.raises(ConfigError):
        create_config(path, k1)
    append_key(path, "second", k2)
    cfg = load_config(path)
    assert [k.name for k in cfg.keys] == ["default", "second"]
    assert tomllib.loads(path.read_text())["keys"][1]["key_sha256"] == hash_key(k2)
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary file was renamed away


def test_append_to_broken_file_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "g.toml"
    path.write_text("listen = \n")
    with pytest.raises(ConfigError):
        append_key(path, "x", generate_key())
    assert path.read_text() == "listen = \n"
