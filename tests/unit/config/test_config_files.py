"""Config files as people really have them: CRLF, a byte-order mark, a symlink, inline arrays, short names.

Each edit goes through the command line (`main`), as a user runs it, and the
file is then compared byte for byte with what it was.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from guardproxy.app import resolve_config
from guardproxy.cli import main
from guardproxy.config.load import load_config, parse_config
from guardproxy.config.model import ConfigError
from guardproxy.config.write import hash_key
from guardproxy.ops.doctor import check_config

BOM = b"\xef\xbb\xbf"
HASH = "0" * 64
ORIGINAL = (b'# my notes\r\nlisten = "127.0.0.1:0"   # keep this comment\r\n\r\n'
            b'[[keys]]\r\nname = "old"\r\nkey_sha256 = "' + HASH.encode() + b'"\r\n\r\n'
            b'[ban]\r\nafter_failures = 5\r\n')


def keygen(path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["keygen", "--config", str(path), *args])
    out, err = capsys.readouterr()
    return code, out.strip(), err


def test_keygen_keeps_crlf_line_endings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "g.toml"
    path.write_bytes(ORIGINAL)
    code, key, err = keygen(path, capsys, "--name", "phone")
    assert code == 0, err
    after = path.read_bytes()
    assert after.startswith(ORIGINAL)
    added = after[len(ORIGINAL):]
    assert added.count(b"\n") == added.count(b"\r\n") >= 3  # the new block uses the file's own line ending
    assert hash_key(key).encode() in added and "nothing else changed" in err
    assert [k.name for k in load_config(path).keys] == ["old", "phone"]


@pytest.mark.skipif(sys.platform == "win32", reason="symlinks need privileges on Windows")
def test_keygen_writes_through_a_symlink(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    real = tmp_path / "etc" / "guardproxy.toml"
    real.parent.mkdir()
    real.write_bytes(ORIGINAL)
    real.chmod(0o640)
    link = tmp_path / "link.toml"
    link.symlink_to(real)
    code, key, err = keygen(link, capsys, "--name", "phone")
    assert code == 0, err
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert hash_key(key) in real.read_text()
    assert stat.S_IMODE(real.stat().st_mode) == 0o640
    assert str(real) in err  # says where the key really went
    assert not list(real.parent.glob(".*.tmp")) and not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("name", ["x", "ab", "a-very-long-name-" * 6])
def test_keygen_with_any_name_length_appends_a_real_block(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          name: str) -> None:
    path = tmp_path / "g.toml"
    path.write_bytes(ORIGINAL.replace(b"\r\n", b"\n"))
    code, key, err = keygen(path, capsys, "--name", name)
    assert code == 0, err
    cfg = load_config(path)
    assert [k.name for k in cfg.keys] == ["old", name] and cfg.ban.after_failures == 5
    assert f'\n[[keys]]\nname = "{name}"\nkey_sha256 = "{hash_key(key)}"\n' in path.read_text()


def test_init_with_a_short_name_writes_a_valid_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "g.toml"
    assert main(["init", "--config", str(path), "--name", "x"]) == 0
    capsys.readouterr()
    cfg = load_config(path)
    assert [k.name for k in cfg.keys] == ["x"] and cfg.ban.after_failures == 20


def test_a_utf8_bom_is_accepted_everywhere_and_kept(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "g.toml"
    path.write_bytes(BOM + ORIGINAL)
    assert [k.name for k in load_config(path).keys] == ["old"]
    assert check_config(path, {}, windows=False)[1]["keys"][0]["name"] == "old"
    code, key, err = keygen(path, capsys, "--name", "phone")
    assert code == 0, err
    assert path.read_bytes().startswith(BOM + ORIGINAL)
    assert [k.name for k in load_config(path).keys] == ["old", "phone"]


def test_utf16_is_named_not_called_invalid_toml(tmp_path: Path) -> None:
    path = tmp_path / "g.toml"
    path.write_bytes(ORIGINAL.decode().encode("utf-16"))  # what PowerShell 5's `>` writes
    with pytest.raises(ConfigError, match="UTF-16 text .* save it as UTF-8"):
        load_config(path)


def test_keygen_on_inline_array_keys_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "g.toml"
    original = f'listen = "127.0.0.1:0"\nkeys = [{{name = "a", key_sha256 = "{HASH}"}}]\n\n[ban]\n'.encode()
    path.write_bytes(original)
    assert [k.name for k in load_config(path).keys] == ["a"]  # valid TOML, and a valid config
    code, key, err = keygen(path, capsys, "--name", "phone")
    assert code == 2 and key == ""
    assert err.startswith(f"guardproxy: config error: {path}:2: keys: expected [[keys]] blocks") and "inline" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert path.read_bytes() == original


@pytest.mark.parametrize("env_key", ["abc", "k" * 15, " " + "k" * 20, "k" * 20 + "\r", "k" * 513])
def test_env_key_follows_the_same_rule_as_a_key_in_the_file(env_key: str) -> None:
    with pytest.raises(ConfigError, match="GUARDPROXY_API_KEY .*: expected a key "):
        parse_config({}, None, env_key=env_key)
    with pytest.raises(ConfigError, match=r"keys\[0\].key: expected a key "):
        parse_config({"keys": [{"name": "a", "key": env_key}]}, None)
    assert parse_config({}, None, env_key="k" * 16).keys[0].name == "env"


def test_env_key_too_short_stops_run_with_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as e:
        resolve_config(None, environ={"GUARDPROXY_API_KEY": "abc"})
    assert str(e.value) == ("GUARDPROXY_API_KEY (environment variable): expected a key of at least 16 characters "
                            "(this one has 3)")
    assert not (tmp_path / "guardproxy.toml").exists()


def test_an_edit_never_writes_what_it_cannot_read_back(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "g.toml"
    broken = ORIGINAL + b"[limits]\r\nper_ip = \"fast\"\r\n"
    path.write_bytes(broken)
    code, _, err = keygen(path, capsys, "--name", "phone")
    assert code == 2 and "limits.per_ip" in err and path.read_bytes() == broken
