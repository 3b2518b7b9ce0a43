"""Key commands: `init`, `keygen`, and `keys list | revoke | rotate`.

A new key is shown once and stored only as its hash.  Every command that
changes the config edits it in place (config/edit.py) and says which lines it
changed; a running gate notices the saved file within about a second.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import textwrap
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator, Mapping

from ..config.edit import KeyEdit, append_key, revoke_key, rotate_key
from ..config.load import parse_config
from ..config.lock import config_lock
from ..config.model import CommandError, Config, ConfigError, KeyEntry
from ..config.paths import CONFIG_HELP, env_api_key, find_config, required_config
from ..config.source import parse_toml, read_config_text
from ..config.values import parse_duration
from ..config.write import create_config, generate_key
from ..decisions.auth import key_state
from ..engine.accesslog import LogRecord
from ..wire.printable import printable
from .columns import table

LOG_SCAN_LIMIT = 256 * 1024 * 1024  # bytes of access log read, newest first, to find each key's last use
RELOAD_NOTE = "a running guardproxy applies the change within about a second of the save"


def new_key_banner(key: str, path: Path, name: str, listen: str = "localhost:11435") -> str:
    """The one time a new key is shown: by `init`, and by the first `run` that creates the config."""
    line = "=" * 72
    return (f"{line}\n"
            f"  New API key \"{name}\" (shown only this once; only its hash is stored):\n\n"
            f"      {key}\n\n"
            f"  Config: {path.resolve()}\n"
            f"  Use it: curl -H 'X-API-Key: {key}' http://{listen}/api/tags\n"
            f"          (OpenAI SDKs: api_key=<key>, sent as Authorization: Bearer)\n"
            f"{line}")


def add_parser(sub: Any) -> None:
    init = sub.add_parser("init", help="write a fresh config with a new key")
    init.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
    init.add_argument("--name", default="default", help="name of the first key (default: default)")
    init.set_defaults(func=cmd_init)
    kg = sub.add_parser("keygen", help="make a new key, add it to the config and print it once")
    kg.add_argument("--config", metavar="FILE", help="config file to add the key to")
    kg.add_argument("--name", help="a name for the key (default: key-N)")
    kg.add_argument("--admin", action="store_true",
                    help="the key may also pull, push, create, copy and delete models")
    kg.set_defaults(func=cmd_keygen)
    keys = sub.add_parser("keys", help="list, revoke or rotate the config's keys")
    verbs = keys.add_subparsers(dest="verb", metavar="VERB", required=True)
    ls = verbs.add_parser("list", help="the keys: scopes, state (active, expired, revoked, rotating), last use")
    ls.set_defaults(func=cmd_list)
    rv = verbs.add_parser("revoke", help="refuse a key from now on (adds `revoked = <today>` to its block)")
    rv.add_argument("name", help="the key's name")
    rv.set_defaults(func=cmd_revoke)
    rt = verbs.add_parser("rotate", help="give a key a new value, printed once; same name and scopes")
    rt.add_argument("name", help="the key's name")
    rt.add_argument("--grace", metavar="DURATION", default="0",
                    help="the old value keeps working this long, e.g. 24h (default: it stops at once)")
    rt.set_defaults(func=cmd_rotate)
    for p in (ls, rv, rt):
        p.add_argument("--config", metavar="FILE", help=CONFIG_HELP)


def cmd_init(args: argparse.Namespace) -> int:
    path, _ = find_config(args.config)
    key = generate_key()
    create_config(path, key, args.name)
    print(new_key_banner(key, path, args.name))
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    path, _ = find_config(args.config)
    key = generate_key()
    with config_lock(path):  # the name chosen, and whether the file exists, hold until the key is saved
        if not path.exists():
            name = args.name or "default"
            create_config(path, key, name, admin=args.admin)
            print(f"created {path} with key \"{name}\"", file=sys.stderr)
        else:
            name = args.name or _next_name(path)
            edit = append_key(path, name, key, admin=args.admin)
            _say(f"added key \"{name}\"", path, edit)
    if args.admin:
        print("this key is an admin key: it may pull, push, create, copy and delete models", file=sys.stderr)
    print(key)
    return 0


def _next_name(path: Path) -> str:
    try:
        keys = parse_toml(read_config_text(path)).get("keys", [])
        names = {k.get("name") for k in keys if isinstance(k, dict)}
    except ConfigError:
        names = set()  # append_key reports the file's problem
    n = len(names) + 1
    while f"key-{n}" in names:
        n += 1
    return f"key-{n}"


def _say(what: str, path: Path, edit: KeyEdit) -> None:
    through = f" (through the link to {edit.target})" if path.is_symlink() else ""
    print(f"{what} in {path}{through}: {edit.summary}; nothing else changed", file=sys.stderr)


def cmd_revoke(args: argparse.Namespace) -> int:
    path = required_config(args.config)
    edit = revoke_key(path, args.name, datetime.now(timezone.utc).date())
    if not edit.changed:
        print(f"key \"{args.name}\" in {path}: {edit.summary}", file=sys.stderr)
        return 0
    _say(f"revoked key \"{args.name}\"", path, edit)
    print(f"it is refused (401) from now on; {RELOAD_NOTE}", file=sys.stderr)
    return 0


def cmd_rotate(args: argparse.Namespace) -> int:
    path = required_config(args.config)
    try:
        grace = parse_duration(args.grace)
    except ValueError as e:
        raise CommandError(f"keys rotate: --grace: expected {e}") from None
    key = generate_key()
    edit, until = rotate_key(path, args.name, key, grace=grace, now=datetime.now(timezone.utc))
    _say(f"rotated key \"{args.name}\"", path, edit)
    old = (f"the old key works until {until:%Y-%m-%dT%H:%M:%SZ}" if until is not None
           else "the old key is refused from now on")
    print(f"{old}; {RELOAD_NOTE}", file=sys.stderr)
    print(key)
    return 0


# --- keys list ---------------------------------------------------------------------------------

COLUMNS = ("NAME", "STATE", "ADMIN", "CLOUD", "METRICS", "MODELS", "RATE", "MAX_CONCURRENT", "TOKENS", "EXPIRES",
           "LAST_USE")


@dataclass(frozen=True)
class KeyRow:
    cells: tuple[str, ...]  # in COLUMNS order
    note: str | None = None  # a line under the table (a rotation's end)


def key_rows(config: Config, raw_keys: Iterable[Any], now: datetime, last: Mapping[str, str]) -> list[KeyRow]:
    raw = {k.get("name"): k for k in raw_keys if isinstance(k, dict)}
    rows = []
    for e in config.keys:
        r = raw.get(e.name, {})
        state = key_state(e, now)
        rows.append(KeyRow((e.name, state, _yes(e.admin), _yes(e.cloud), _yes(e.metrics),
                            ",".join(e.models) if e.models is not None else "all",
                            _show(r.get("rate")), _show(e.max_concurrent), _show(r.get("tokens")),
                            _show(e.expires), last.get(e.name, "-")), _rotation_note(e, state)))
    return rows


def _gpu_note(e: KeyEntry) -> str | None:
    """The key's limits on what a body asks of the GPU, when it has any."""
    limits = [f"{name} {value}" for name, value in (("max_num_ctx", e.max_num_ctx),
                                                    ("max_output_tokens", e.max_output_tokens)) if value]
    return f"\"{e.name}\": bodies lowered to " + ", ".join(limits) if limits else None


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _show(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ",".join(f"{k}={_show(v)}" for k, v in value.items())
    return str(value)


def _rotation_note(e: KeyEntry, state: str) -> str | None:
    if state != "rotating" or e.previous_valid_until is None:
        return None
    return f"rotating: the old value of \"{e.name}\" works until {e.previous_valid_until:%Y-%m-%dT%H:%M:%SZ}"


def render_keys(rows: list[KeyRow], width: int | None, notes: Iterable[str] = ()) -> str:
    """A table when it fits `width` (None: no limit, as when piped); else one short paragraph per key."""
    rows = [KeyRow(tuple(printable(c) for c in r.cells), r.note and printable(r.note)) for r in rows]
    lines = table(COLUMNS, [r.cells for r in rows], len(COLUMNS))
    all_notes = [n for n in (r.note for r in rows) if n] + [printable(n) for n in notes]
    if width is None or max(map(len, lines)) <= width:
        return "\n".join(lines + [""] * bool(all_notes) + all_notes) + "\n"
    width = max(width, 20)
    lines = []
    for r in rows:
        name, state, *scopes, last = r.cells
        lines += textwrap.wrap(f"{name}  {state}  last use: {last}", width, break_on_hyphens=False)
        lines += textwrap.wrap("  ".join(f"{h.lower()}: {c}" for h, c in zip(COLUMNS[2:-1], scopes)), width,
                               initial_indent="    ", subsequent_indent="    ", break_on_hyphens=False)
    for n in all_notes:
        lines += [""] + textwrap.wrap(n, width, break_on_hyphens=False)
    return "\n".join(lines) + "\n"


def last_use(log: Path, names: Iterable[str], limit: int = LOG_SCAN_LIMIT) -> tuple[dict[str, str], bool]:
    """The newest access-log time of each key name, reading from the end (the log is in time order).

    Also whether the answer is complete: every key found, or the whole log read.
    """
    wanted: set[str] = set(names)
    found: dict[str, str] = {}
    with open(log, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        for raw in _lines_backwards(f, size, limit):
            if b'"key"' not in raw:
                continue
            rec = LogRecord.from_line(raw.decode("utf-8", "replace"))
            if rec is not None and rec.key in wanted and rec.key not in found:
                found[rec.key] = rec.time or "?"
                if len(found) == len(wanted):
                    break
    return found, size <= limit or len(found) == len(wanted)


def _lines_backwards(f: BinaryIO, size: int, limit: int, chunk: int = 1 << 16) -> Iterator[bytes]:
    pos = size
    stop = max(pos - limit, 0)
    tail = b""
    while pos > stop:
        step = min(chunk, pos - stop)
        pos -= step
        f.seek(pos)
        parts = (f.read(step) + tail).split(b"\n")
        tail = parts[0]
        yield from reversed(parts[1:])
    if stop == 0:
        yield tail


def _last_use_for(config: Config) -> tuple[dict[str, str], str | None]:
    log = config.access_log
    if log in ("", "-"):
        return {}, f"last use: unknown, [log] access is {'off' if not log else 'stdout'} (set it to a file to see it)"
    try:
        found, whole = last_use(Path(log), [k.name for k in config.keys])
    except OSError as e:
        return {}, f"last use: cannot read {log}: {e.strerror or e}"
    if whole:
        return found, None
    return found, f"last use: from the newest {LOG_SCAN_LIMIT >> 20} MiB of {log}; \"-\" means not seen there"


def cmd_list(args: argparse.Namespace) -> int:
    path = required_config(args.config)
    source = read_config_text(path)
    data = parse_toml(source)
    config = parse_config(data, path, source.text, env_key=env_api_key(os.environ))
    last, note = _last_use_for(config)
    raw_keys = data.get("keys", [])
    rows = key_rows(config, raw_keys if isinstance(raw_keys, list) else [], datetime.now(timezone.utc), last)
    width = shutil.get_terminal_size().columns - 1 if sys.stdout.isatty() else None
    notes = [n for n in map(_gpu_note, config.keys) if n] + ([note] if note else [])
    sys.stdout.write(render_keys(rows, width, notes))
    return 0
