"""Writing configs: new keys, the fresh-config template, appending without touching the rest."""

from __future__ import annotations

import os
import re
import stat
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import pytest

from guardproxy.config.load import load_config, parse_config
from guardproxy.config.model import Ban, ConfigError, Cors, ServerLimits, Timeouts, TrafficLimits
from guardproxy.config.edit import append_key
from guardproxy.config.write import create_config, generate_key, hash_key, initial_config_text, write_atomic


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


@pytest.mark.parametrize("hard_links", [True, False])
def test_init_never_overwrites_a_file_made_while_it_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           hard_links: bool) -> None:
    path = tmp_path / "g.toml"
    mkstemp = tempfile.mkstemp

    def meanwhile(*args: Any, **kwargs: Any) -> tuple[int, str]:
        made = mkstemp(*args, **kwargs)
        path.write_text("# another writer's config\n")  # appears after any look before writing
        return made
    monkeypatch.setattr(tempfile, "mkstemp", meanwhile)
    if not hard_links:
        def no_link(src: str, dst: Path) -> None:
            raise PermissionError(1, "Operation not permitted")
        monkeypatch.setattr(os, "link", no_link)
    with pytest.raises(ConfigError, match="already exists"):
        create_config(path, generate_key())
    assert path.read_text() == "# another writer's config\n"
    assert [p.name for p in tmp_path.iterdir()] == ["g.toml"]  # no temporary file left
    path.unlink()
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    create_config(path, generate_key())
    assert [k.name for k in load_config(path).keys] == ["default"] and [p.name for p in tmp_path.iterdir()] == ["g.toml"]
    if sys.platform != "win32":
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX: a rename is durable once its directory is synced")
def test_a_save_syncs_the_file_then_its_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[bool] = []  # per fsync: was it a directory
    fsync = os.fsync

    def recording(fd: int) -> None:
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        fsync(fd)
    monkeypatch.setattr(os, "fsync", recording)
    write_atomic(tmp_path / "g.toml", "listen = \"127.0.0.1:1\"\n", private=True)
    assert synced == [False, True]


def test_append_to_broken_file_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "g.toml"
    path.write_text("listen = \n")
    with pytest.raises(ConfigError):
        append_key(path, "x", generate_key())
    assert path.read_text() == "listen = \n"


# --- the fresh-config template states the defaults ----------------------------------------

KEYS = {"keys": [{"name": "a", "key_sha256": "0" * 64}]}
# Commented-out tables show how to turn a feature on; these values are examples, not defaults.
EXAMPLES = {("tls", "cert"), ("tls", "key"), ("cors", "origins"), ("limits", "per_ip"), ("limits", "max_concurrent"),
            ("metrics", "listen")}


def template_as_if_uncommented() -> dict[str, Any]:
    text = initial_config_text(generate_key())
    return tomllib.loads(re.sub(r"(?m)^# (?=\[\w+\]|\w+ = )", "", text))


def test_every_value_the_template_states_is_the_dataclass_default() -> None:
    data = template_as_if_uncommented()
    assert {"log", "timeouts", "server", "tls", "cors", "limits", "ban"} <= data.keys()
    stated = [(table, key, value) for table, values in data.items() if isinstance(values, dict)
              for key, value in values.items()]
    assert len(stated) >= 19
    defaults = parse_config(KEYS, None)
    assert parse_config({**KEYS, "listen": data["listen"], "upstream": data["upstream"]}, None) == defaults
    for table, key, value in stated:
        if (table, key) in EXAMPLES:
            continue
        # The value written out must be what leaving it out gives: the table's dataclass defaults.
        assert parse_config({**KEYS, table: {key: value}}, None) == parse_config({**KEYS, table: {}}, None), \
            f"[{table}] {key} = {value!r}"
    assert defaults.timeouts == Timeouts() and defaults.server == ServerLimits() and defaults.cors == Cors()
    assert defaults.limits == TrafficLimits() and defaults.ban == Ban() and defaults.access_log == data["log"]["access"]
    # Writing [ban] turns bans on; its after_failures line states the count that then applies.
    assert parse_config({**KEYS, "ban": {}}, None).ban == Ban(data["ban"]["after_failures"])


def test_the_template_examples_are_of_features_that_are_off_by_default() -> None:
    data = template_as_if_uncommented()
    off = parse_config(KEYS, None)
    assert off.tls is None and off.cors.origins == () and off.limits.per_ip is None and off.limits.max_concurrent is None
    assert EXAMPLES <= {(t, k) for t, v in data.items() if isinstance(v, dict) for k in v}


def test_fresh_configs_turn_bans_on() -> None:
    text = initial_config_text(generate_key())
    cfg = parse_config(tomllib.loads(text), None, text)
    assert cfg.ban == Ban(Ban.ENABLED_AFTER_FAILURES, Ban.window, Ban.duration) == Ban(20, 600.0, 900.0)
    assert re.search(r"(?m)^\[ban\] .*\n.*delete this table to turn bans off", text)
    data = tomllib.loads(text)
    assert data["ban"] == {"after_failures": 20, "window": "10min", "duration": "15min"}
    assert data["timeouts"]["body_total"] == "60s" and data["server"]["max_blob"] == "200GiB"
