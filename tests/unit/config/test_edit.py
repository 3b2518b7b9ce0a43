"""`keys revoke` and `keys rotate` edit one block in place and keep every other byte."""

from __future__ import annotations

import difflib
import hashlib
import re
import stat
import sys
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest

from guardproxy.cli import main
from guardproxy.config.edit import grace_end, revoke_key, rotate_key
from guardproxy.config.load import load_config
from guardproxy.config.model import CommandError, ConfigError
from guardproxy.config.write import generate_key, hash_key
from guardproxy.decisions.auth import KeyRing
from guardproxy.wire.errors import Unauthorized
from support.samples import head

OWNER_KEY = "gp_owner-key-0123456789abcdefghijklmnopqrstu"
PLAIN = "0123456789abcdef-plain"
BOM = b"\xef\xbb\xbf"
TODAY = date(2026, 11, 29)
NOW = datetime(2026, 11, 29, 12, 0, 0, 250_000, tzinfo=timezone.utc)

# Comments, indentation, a multi-line array, non-ASCII text, CRLF line endings and a BOM.
CONFIG = (BOM + f"""\
# guardproxy — the team's GPU box
listen = "127.0.0.1:0"   # everyone
upstream = "http://127.0.0.1:11434"

# the owner: may pull
[[keys]]   # owner
name = "owner"
key_sha256 = "{hash_key(OWNER_KEY)}"  # made 2026-01-02
admin = true

# the web app, limited
[[keys]]
  name = "vercel-app"
  key = "{PLAIN}"   # hand-written
  models = [
    "qwen3:*",   # the family
    "llama3.2",
  ]
  rate = "30/min"
# bans
[ban]
after_failures = 20
""".replace("\n", "\r\n").encode())


def lines(data: bytes) -> list[bytes]:
    return data.splitlines(keepends=True)


def diff(before: bytes, after: bytes) -> list[tuple[str, list[bytes], list[bytes]]]:
    """The changed runs of lines: (op, old lines, new lines); every other line is byte-identical."""
    a, b = lines(before), lines(after)
    return [(op, a[a1:a2], b[b1:b2]) for op, a1, a2, b1, b2 in
            difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes() if op != "equal"]


def ring_accepts(path: Path, key: str, now: datetime = NOW) -> str | None:
    ring = KeyRing(load_config(path).keys)
    try:
        return ring.identify(head(X_API_Key=key), now=now).name
    except Unauthorized:
        return None


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    path = tmp_path / "g.toml"
    path.write_bytes(CONFIG)
    path.chmod(0o640)
    return path


@pytest.mark.posix_only("checks that the POSIX mode 0640 is kept")
def test_revoke_adds_one_line_to_the_block(cfg: Path) -> None:
    assert ring_accepts(cfg, PLAIN) == "vercel-app"
    edit = revoke_key(cfg, "vercel-app", TODAY)
    after = cfg.read_bytes()
    assert diff(CONFIG, after) == [("insert", [], [b"  revoked = 2026-11-29\r\n"])]
    assert lines(after)[lines(after).index(b"  revoked = 2026-11-29\r\n") - 1] == b'  rate = "30/min"\r\n'
    assert edit.summary == "line 20 added" and edit.changed
    assert after.startswith(BOM) and stat.S_IMODE(cfg.stat().st_mode) == 0o640
    entry = load_config(cfg).keys[1]
    assert entry.revoked == TODAY
    assert ring_accepts(cfg, PLAIN) is None and ring_accepts(cfg, OWNER_KEY) == "owner"
    # Again: nothing changes, and it is said.
    again = revoke_key(cfg, "vercel-app", TODAY + timedelta(days=1))
    assert not again.changed and "already revoked (revoked = 2026-11-29)" in again.summary
    assert cfg.read_bytes() == after


def test_revoke_a_block_followed_by_comments_and_a_table(cfg: Path) -> None:
    revoke_key(cfg, "owner", TODAY)
    assert diff(CONFIG, cfg.read_bytes()) == [("insert", [], [b"revoked = 2026-11-29\r\n"])]
    assert b"admin = true\r\nrevoked = 2026-11-29\r\n\r\n# the web app" in cfg.read_bytes()


def test_rotate_with_grace_keeps_the_old_key_until_the_grace_ends(cfg: Path) -> None:
    new = generate_key()
    edit, until = rotate_key(cfg, "owner", new, grace=24 * 3600, now=NOW)
    assert until == datetime(2026, 11, 30, 12, 0, 1, tzinfo=timezone.utc)  # never shorter than asked
    assert diff(CONFIG, cfg.read_bytes()) == [
        ("replace", [f'key_sha256 = "{hash_key(OWNER_KEY)}"  # made 2026-01-02\r\n'.encode()],
         [f'key_sha256 = "{hash_key(new)}"  # made 2026-01-02\r\n'.encode()]),
        ("insert", [], [f'previous_key_sha256 = "{hash_key(OWNER_KEY)}"\r\n'.encode(),
                        b"previous_valid_until = 2026-11-30T12:00:01Z\r\n"])]
    assert edit.summary == "line 8 changed, lines 10-11 added"
    entry = load_config(cfg).keys[0]
    assert (entry.name, entry.admin, entry.sha256.hex()) == ("owner", True, hash_key(new))
    assert ring_accepts(cfg, new) == "owner"
    assert ring_accepts(cfg, OWNER_KEY, now=until - timedelta(microseconds=1)) == "owner"
    assert ring_accepts(cfg, OWNER_KEY, now=until) is None
    assert ring_accepts(cfg, new, now=until + timedelta(days=400)) == "owner"


def test_rotating_again_replaces_the_previous_lines_or_removes_them(cfg: Path) -> None:
    first, second, third = generate_key(), generate_key(), generate_key()
    rotate_key(cfg, "vercel-app", first, grace=3600, now=NOW)
    once = cfg.read_bytes()
    rotate_key(cfg, "vercel-app", second, grace=60, now=NOW)
    twice = cfg.read_bytes()
    # In place: the key line and the two previous-key lines, nothing added.
    assert [(op, len(old), len(new)) for op, old, new in diff(once, twice)] == [("replace", 1, 1), ("replace", 2, 2)]
    assert ring_accepts(cfg, first) == "vercel-app" and ring_accepts(cfg, PLAIN) is None  # one previous key only
    edit, until = rotate_key(cfg, "vercel-app", third, grace=0, now=NOW)
    assert until is None and "2 lines removed" in edit.summary
    assert ring_accepts(cfg, third) == "vercel-app" and ring_accepts(cfg, first) is None
    assert ring_accepts(cfg, second) is None
    # The only line left changed from the original is the key line.
    (change,) = diff(CONFIG, cfg.read_bytes())
    assert change == ("replace", [f'  key = "{PLAIN}"   # hand-written\r\n'.encode()],
                      [f'  key_sha256 = "{hash_key(third)}"   # hand-written\r\n'.encode()])


def test_rotating_again_keeps_how_the_previous_lines_are_written(cfg: Path) -> None:
    first, second = generate_key(), generate_key()
    _, until = rotate_key(cfg, "owner", first, grace=3600, now=NOW)
    written = f"previous_valid_until = {until:%Y-%m-%dT%H:%M:%SZ}".encode()
    by_hand = cfg.read_bytes().replace(b"previous_key_sha256 = ", b"  'previous_key_sha256'  =  ").replace(
        written, written + b"   # the old key, for a day")
    cfg.write_bytes(by_hand)
    rotate_key(cfg, "owner", second, grace=60, now=NOW)
    assert diff(by_hand, cfg.read_bytes()) == [
        ("replace", [f'key_sha256 = "{hash_key(first)}"  # made 2026-01-02\r\n'.encode()],
         [f'key_sha256 = "{hash_key(second)}"  # made 2026-01-02\r\n'.encode()]),
        ("replace", [f"  'previous_key_sha256'  =  \"{hash_key(OWNER_KEY)}\"\r\n".encode(),
                     written + b"   # the old key, for a day\r\n"],
         [f"  'previous_key_sha256'  =  \"{hash_key(first)}\"\r\n".encode(),
          b"previous_valid_until = 2026-11-29T12:01:01Z   # the old key, for a day\r\n"])]
    assert ring_accepts(cfg, first) == "owner" and ring_accepts(cfg, OWNER_KEY) is None


def test_a_plaintext_key_is_rotated_into_a_hash_and_its_old_value_kept_by_hash(cfg: Path) -> None:
    new = generate_key()
    rotate_key(cfg, "vercel-app", new, grace=600, now=NOW)
    text = cfg.read_text(encoding="utf-8-sig")
    assert PLAIN not in text and hashlib.sha256(PLAIN.encode()).hexdigest() in text
    entry = load_config(cfg).keys[1]
    assert not entry.plaintext and entry.models == ("qwen3:*", "llama3.2")
    assert ring_accepts(cfg, PLAIN) == "vercel-app" and ring_accepts(cfg, new) == "vercel-app"
    assert re.search(rb'\r\n  rate = "30/min"\r\n  previous_key_sha256 = "[0-9a-f]{64}"\r\n'
                     rb'  previous_valid_until = 2026-11-29T12:10:01Z\r\n# bans\r\n', cfg.read_bytes())


def test_grace_end_rounds_up_to_whole_seconds() -> None:
    assert grace_end(datetime(2026, 1, 1, tzinfo=timezone.utc), 86400) == datetime(2026, 1, 2, tzinfo=timezone.utc)
    assert grace_end(datetime(2026, 1, 1, 0, 0, 0, 1, tzinfo=timezone.utc), 0.5) == \
        datetime(2026, 1, 1, 0, 0, 1, tzinfo=timezone.utc)


@pytest.mark.parametrize("edit", [lambda p: revoke_key(p, "nobody", TODAY),
                                  lambda p: rotate_key(p, "nobody", generate_key(), grace=0, now=NOW)])
def test_unknown_names_are_named_and_change_nothing(cfg: Path, edit) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=r'keys: no key named "nobody" \(the file\'s keys: "owner", "vercel-app"\)'):
        edit(cfg)
    assert cfg.read_bytes() == CONFIG


def test_env_is_not_in_the_file(cfg: Path) -> None:
    with pytest.raises(ConfigError, match=r"comes from \$GUARDPROXY_API_KEY"):
        revoke_key(cfg, "env", TODAY)


def test_a_revoked_key_is_not_rotated(cfg: Path) -> None:
    revoke_key(cfg, "owner", TODAY)
    before = cfg.read_bytes()
    with pytest.raises(CommandError, match="is revoked, and a revoked key stays revoked; make a new key with `keygen`"):
        rotate_key(cfg, "owner", generate_key(), grace=0, now=NOW)
    assert cfg.read_bytes() == before


def test_inline_array_keys_are_refused_with_file_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "g.toml"
    original = f'listen = "127.0.0.1:0"\nkeys = [{{name = "a", key = "{PLAIN}"}}]\n'.encode()
    path.write_bytes(original)
    for edit in (lambda: revoke_key(path, "a", TODAY), lambda: rotate_key(path, "a", generate_key(), grace=0, now=NOW)):
        with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}:2: keys: expected \[\[keys\]\] blocks"):
            edit()
    assert path.read_bytes() == original


@pytest.mark.parametrize("text", [
    # A string holding a line that looks like a [[keys]] header: the blocks cannot be matched to the keys.
    f'[[keys]]\nname = "a"\nkey = "{PLAIN}"\n[cors]\norigins = ["""\n[[keys]]\n"""]\n',
    # One that looks like a table header inside the block: the new line would land inside the
    # string, so the result does not read back as intended.
    f'[[keys]]\nname = "a"\nkey = "{PLAIN}"\nmodels = ["""x\n[cors]\n"""]\n',
])
def test_a_layout_the_line_search_misjudges_is_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "g.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"could not (find the \[\[keys\]\] block of|revoke) \"a\".*not changed"):
        revoke_key(path, "a", TODAY)
    assert path.read_text() == text


@pytest.mark.skipif(sys.platform == "win32", reason="symlinks need privileges on Windows")
def test_edits_go_through_a_symlink(cfg: Path, tmp_path: Path) -> None:
    link = tmp_path / "link.toml"
    link.symlink_to(cfg)
    edit = revoke_key(link, "owner", TODAY)
    assert link.is_symlink() and edit.target == cfg.resolve()
    assert load_config(cfg).keys[0].revoked == TODAY and stat.S_IMODE(cfg.stat().st_mode) == 0o640


# --- through the command line -------------------------------------------------------------------

def test_revoke_and_rotate_commands(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "rotate", "owner", "--grace", "24h", "--config", str(cfg)]) == 0
    out, err = capsys.readouterr()
    new = out.strip()
    assert new.startswith("gp_") and "\n" not in new and hash_key(new) in cfg.read_text(encoding="utf-8-sig")
    assert f'rotated key "owner" in {cfg}: line 8 changed, lines 10-11 added; nothing else changed' in err
    assert "the old key works until " in err and new not in err
    assert main(["keys", "revoke", "vercel-app", "--config", str(cfg)]) == 0
    out, err = capsys.readouterr()
    assert out == "" and f'revoked key "vercel-app" in {cfg}: line 22 added; nothing else changed' in err
    assert main(["keys", "revoke", "vercel-app", "--config", str(cfg)]) == 0
    assert "already revoked" in capsys.readouterr().err
    assert main(["keys", "revoke", "nobody", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"guardproxy: {cfg}: keys: no key named") and len(err.strip().splitlines()) == 1
    assert main(["keys", "rotate", "owner", "--grace", "a day", "--config", str(cfg)]) == 2
    assert "--grace: expected a duration" in capsys.readouterr().err
    assert main(["keys", "list", "--config", str(tmp_missing := cfg.with_name("none.toml"))]) == 2
    assert f"{tmp_missing}: cannot read: no such file" in capsys.readouterr().err
