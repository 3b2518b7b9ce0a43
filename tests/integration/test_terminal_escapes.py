"""No control character a client, a host or a file supplied reaches the operator's terminal: every report
escapes them (usage, keys list, doctor), as the access log and /metrics do."""

from __future__ import annotations

import json
from pathlib import Path

from guardproxy.config.write import generate_key, hash_key
from guardproxy.ops.finding import FAIL, Finding
from support.processes import gp

HOSTILE = "\x1b]2;PWNED\x07\x1b[2J"
SHOWN = "\\x1b]2;PWNED\\x07\\x1b[2J"


def _clean(text: str) -> bool:
    """Nothing but printable characters and line ends."""
    return all(c == "\n" or c.isprintable() for c in text)


def test_usage_by_model_and_by_ip_prints_a_hostile_name_escaped(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    rec = {"time": "2026-11-26T10:00:00Z", "client": "10.0.0.9\x1b[31m", "method": "POST", "path": "/api/chat",
           "status": 400, "key": "app\u202e", "model": HOSTILE}
    log.write_text("\n".join(json.dumps(rec) for _ in range(6)) + "\n")
    for by in ("model", "ip", "key"):
        r = gp("usage", "--log", str(log), "--since", "all", "--by", by, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert _clean(r.stdout), repr(r.stdout)
    assert SHOWN in gp("usage", "--log", str(log), "--since", "all", "--by", "model", cwd=tmp_path).stdout
    assert "app\\u202e" in gp("usage", "--log", str(log), "--since", "all", cwd=tmp_path).stdout


def test_keys_list_prints_a_hostile_key_name_escaped(tmp_path: Path) -> None:
    path = tmp_path / "guardproxy.toml"
    path.write_text(f'[log]\naccess = ""\n[[keys]]\nname = "evil\\u001b[2J\\u0007"\nkey_sha256 = "{hash_key(generate_key())}"\n'
                    f'models = ["llama\\u001b]0;x\\u0007*"]\n')
    r = gp("keys", "list", "--config", str(path), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert _clean(r.stdout) and "evil\\x1b[2J\\x07" in r.stdout and "llama\\x1b]0;x\\x07*" in r.stdout


def test_a_doctor_finding_quoting_a_host_is_one_escaped_line() -> None:
    line = Finding(FAIL, f"upstream lists {HOSTILE}\nfake line", "fix\rit").line()
    assert _clean(line) and "\n" not in line and SHOWN in line
