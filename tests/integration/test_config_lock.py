"""Concurrent config edits all land: keygen, keys revoke and keys rotate as 20 processes at once."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

from guardproxy.config.lock import config_lock, lock_path
from guardproxy.config.write import create_config, generate_key, hash_key
import pytest

from support.processes import child_env


def _start(*args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "guardproxy", *args], cwd=cwd, env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_twenty_concurrent_edits_of_every_kind_all_land(tmp_path: Path) -> None:
    path = tmp_path / "guardproxy.toml"
    create_config(path, generate_key(), "first")
    old = {f"k{i}": hash_key(generate_key()) for i in range(8)}  # the keys that will be revoked or rotated
    with path.open("a") as f:
        f.writelines(f'\n[[keys]]\nname = "{name}"\nkey_sha256 = "{h}"\n' for name, h in old.items())
    config = ["--config", str(path)]
    procs = ([("keygen", _start("keygen", *config, cwd=tmp_path)) for _ in range(8)]
             + [("named", _start("keygen", "--name", f"n{i}", *config, cwd=tmp_path)) for i in range(4)]
             + [("revoke", _start("keys", "revoke", f"k{i}", *config, cwd=tmp_path)) for i in range(4)]
             + [("rotate", _start("keys", "rotate", f"k{i}", *config, cwd=tmp_path)) for i in range(4, 8)])
    results = []
    try:
        for kind, p in procs:
            out, err = p.communicate(timeout=60)
            assert p.returncode == 0, err
            results.append((kind, out.strip()))
    finally:
        for _, p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    keys = {k["name"]: k for k in tomllib.loads(path.read_text())["keys"]}
    hashes = {k["key_sha256"] for k in keys.values()}
    new_keys = [out for kind, out in results if kind in ("keygen", "named", "rotate")]
    assert len(new_keys) == 16 and all(hash_key(k) in hashes for k in new_keys)  # every printed key works
    assert len(keys) == 1 + 8 + 8 + 4
    assert all("revoked" in keys[f"k{i}"] for i in range(4))
    assert all(keys[f"k{i}"]["key_sha256"] != old[f"k{i}"] for i in range(4, 8))
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_an_edit_waits_for_the_lock_and_says_who_holds_it(tmp_path: Path) -> None:
    path = tmp_path / "guardproxy.toml"
    create_config(path, generate_key())
    with config_lock(path):
        with config_lock(path):  # the same process again: no deadlock
            pass
        r = subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; "
                            "from guardproxy.config.lock import config_lock; "
                            "cm = config_lock(Path(sys.argv[1]), timeout=0.2); cm.__enter__()", str(path)],
                           env=child_env(), capture_output=True, text=True, timeout=30)
        assert r.returncode != 0 and "another command has been editing this file" in r.stderr
        assert str(lock_path(path)) in r.stderr
    assert lock_path(path) == tmp_path / ".guardproxy.toml.lock"


@pytest.mark.skipif(sys.platform == "win32", reason="symlinks need privileges on Windows")
def test_a_symlinked_config_is_locked_where_it_is_written(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    real = tmp_path / "etc" / "gate.toml"
    create_config(real, generate_key())
    link = tmp_path / "guardproxy.toml"
    os.symlink(real, link)
    assert lock_path(link) == tmp_path / "etc" / ".gate.toml.lock"
