"""Editing the [[keys]] blocks of a config in place: add a key, revoke one, rotate one.

Each edit touches only the lines it must (an appended block, one added or
replaced line in the key's own block) and keeps every other byte: comments,
order, line endings, the byte-order mark.  The lines are found by reading the
text; the result is then parsed and compared with the data the edit means to
produce, so a layout the line search misjudges is refused instead of written.
"""

from __future__ import annotations

import copy
import difflib
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from .lock import locked
from .model import ENV_KEY, CommandError, ConfigError
from .source import ConfigText, parse_toml, read_config_text, split_lines, table_header
from .write import hash_key, key_block, save_checked, toml_value

_HEADER = re.compile(r"[ \t]*\[")  # a table or array-of-tables header
_PLAIN_KEY = re.compile(r"""([ \t]*(?:key|"key"|'key')[ \t]*=[ \t]*)("(?:[^"\\]|\\.)*"|'[^']*')([ \t]*(?:#.*)?)""")
_HASH = re.compile(r"""([ \t]*(?:key_sha256|"key_sha256"|'key_sha256')[ \t]*=[ \t]*)(["'])[0-9a-fA-F]{64}\2(.*)""")
PREVIOUS = ("previous_key_sha256", "previous_valid_until")


@dataclass(frozen=True)
class KeyEdit:
    target: Path   # the file written: the config, or the file its symlink points at
    summary: str   # which lines changed, e.g. "line 14 added"
    changed: bool = True


def _field(name: str) -> re.Pattern[str]:
    return re.compile(rf"""([ \t]*)(?:{name}|"{name}"|'{name}')[ \t]*=""")


def _with_value(line: str, field: str, value: str, indent: str) -> str:
    """The field's line with a new value, keeping how the name is written, its spacing and its comment."""
    m = re.fullmatch(rf"""([ \t]*(?:{field}|"{field}"|'{field}')[ \t]*=[ \t]*)"""
                     r"""("(?:[^"\\]|\\.)*"|'[^']*'|[^#]*?)([ \t]*(?:#.*)?)""", _bare(line))
    return f"{m.group(1)}{value}{m.group(3)}" if m else f"{indent}{field} = {value}"


def _ending(line: str) -> str:
    return "\r\n" if line.endswith("\r\n") else "\n" if line.endswith("\n") else ""


def _bare(line: str) -> str:
    return line.rstrip("\r\n")


class _Session:
    """One config file being edited: its text as lines, its data, and where the key blocks are."""

    def __init__(self, path: Path, command: str) -> None:
        self.source: ConfigText = read_config_text(path)
        self.data: dict[str, Any] = parse_toml(self.source)
        self.lines = split_lines(self.source.text)
        self._before = list(self.lines)
        self.command = command
        self._refuse_inline_keys()

    @property
    def path(self) -> Path:
        return self.source.path

    def _refuse_inline_keys(self) -> None:
        keys_line = _field("keys")
        for i, line in enumerate(self.lines):
            if _HEADER.match(line):
                return  # top-level fields come before the first table
            if keys_line.match(line):
                raise ConfigError(f"{self.path}:{i + 1}: keys: expected [[keys]] blocks; this file writes its "
                                  f"keys as an inline array (keys = [...]), which `{self.command}` does not edit: "
                                  f"write each key as its own [[keys]] block")

    def keys(self) -> list[dict[str, Any]]:
        keys = self.data.get("keys", [])
        if not isinstance(keys, list) or not all(isinstance(k, dict) for k in keys):
            raise ConfigError(f"{self.path}: keys: expected an array of tables written as [[keys]]")
        return keys

    def find(self, name: str) -> tuple[int, int, int]:
        """(index in keys, first line, end line) of the block named `name`."""
        keys = self.keys()
        names = [k.get("name") for k in keys]
        if name not in names:
            hint = (f"; the key named \"env\" comes from ${ENV_KEY}: change or unset that variable"
                    if name == "env" else "")
            known = ", ".join(f'"{n}"' for n in names) or "none"
            raise CommandError(f"{self.path}: keys: no key named \"{name}\" (the file's keys: {known}){hint}")
        index = names.index(name)
        headers = [i for i, line in enumerate(self.lines) if _HEADER.match(line)]
        blocks = [(i, headers[n + 1] if n + 1 < len(headers) else len(self.lines))
                  for n, i in enumerate(headers) if table_header(self.lines[i]) == ("keys", True)]
        if len(blocks) != len(keys):
            raise ConfigError(f"{self.path}: could not find the [[keys]] block of \"{name}\" (the file's layout "
                              f"is unusual); the file was not changed")
        return (index, *blocks[index])

    def line_of(self, field: str, start: int, end: int) -> int | None:
        pattern = _field(field)
        return next((i for i in range(start + 1, end) if pattern.match(self.lines[i])), None)

    def last_content_line(self, start: int, end: int) -> int:
        """The block's last line holding a value: new lines go after it, before comments leading to the next table."""
        for i in range(end - 1, start, -1):
            s = self.lines[i].strip()
            if s and not s.startswith("#"):
                return i
        return start

    def insert(self, after: int, new_lines: list[str]) -> None:
        if not _ending(self.lines[after]):
            self.lines[after] += self.source.newline
        ending = _ending(self.lines[after])
        self.lines[after + 1:after + 1] = [line + ending for line in new_lines]

    def replace(self, i: int, text: str) -> None:
        self.lines[i] = text + (_ending(self.lines[i]) or "")

    def indent(self, start: int, end: int) -> str:
        i = self.line_of("name", start, end)
        m = _field("name").match(self.lines[i]) if i is not None else None
        return m.group(1) if m else ""

    def save(self, expected: dict[str, Any], what: str, by_hand: str = "") -> KeyEdit:
        target = save_checked(self.source, "".join(self.lines), expected, what, by_hand)
        return KeyEdit(target, _describe(self._before, self.lines))


def _describe(before: list[str], after: list[str]) -> str:
    """The edit in line numbers of the new file: "line 14 added", "line 9 changed, 2 lines removed after line 12"."""
    def span(first: int, end: int) -> str:
        return f"line {first + 1}" if end - first == 1 else f"lines {first + 1}-{end}"

    parts = []
    for op, a1, a2, b1, b2 in difflib.SequenceMatcher(None, before, after, autojunk=False).get_opcodes():
        if op == "equal":
            continue
        common = min(a2 - a1, b2 - b1) if op == "replace" else 0
        if common:
            parts.append(f"{span(b1, b1 + common)} changed")
        if b2 - b1 > common:
            parts.append(f"{span(b1 + common, b2)} added")
        elif a2 - a1 > common:
            n = a2 - a1 - common
            parts.append(f"{n} line{'s' if n > 1 else ''} removed after line {b1 + common}")
    return ", ".join(parts) or "no line changed"


@locked
def append_key(path: Path, name: str, key: str, *, admin: bool = False) -> KeyEdit:
    """Add a [[keys]] block at the end of the file, leaving the rest byte for byte."""
    s = _Session(path, "keygen")
    keys = s.keys()
    if any(k.get("name") == name for k in keys):
        raise CommandError(f"keygen: a key named \"{name}\" already exists in {path}; choose another --name "
                           f"(or give that key a new value with `keys rotate {name}`)")
    text = s.source.text
    if text and not text.endswith("\n"):
        text += s.source.newline
    block = key_block(name, key, admin=admin, newline=s.source.newline)
    s.lines = split_lines(text + block)
    entry: dict[str, Any] = {"name": name, "key_sha256": hash_key(key)}
    if admin:
        entry["admin"] = True
    expected = copy.deepcopy(s.data)
    expected["keys"] = [*keys, entry]
    return s.save(expected, "add the key")


@locked
def revoke_key(path: Path, name: str, today: date) -> KeyEdit:
    """Add `revoked = <today>` to the key's block; a key already revoked is left as it is."""
    s = _Session(path, "keys revoke")
    index, start, end = s.find(name)
    entry = s.keys()[index]
    if "revoked" in entry:
        return KeyEdit(path, f"already revoked (revoked = {entry['revoked']}); nothing changed", changed=False)
    after = s.last_content_line(start, end)
    s.insert(after, [f"{s.indent(start, end)}revoked = {today.isoformat()}"])
    expected = copy.deepcopy(s.data)
    expected["keys"][index]["revoked"] = today
    return s.save(expected, f"revoke \"{name}\"", f"add `revoked = {today.isoformat()}` to its [[keys]] block by hand")


def grace_end(now: datetime, grace: float) -> datetime:
    """When a rotated key's previous value stops working: in whole seconds, never sooner than asked."""
    end = now.astimezone(timezone.utc) + timedelta(seconds=grace)
    return end.replace(microsecond=0) + timedelta(seconds=1) if end.microsecond else end


@locked
def rotate_key(path: Path, name: str, new_key: str, *, grace: float, now: datetime) -> tuple[KeyEdit, datetime | None]:
    """Give the key a new value; with `grace` seconds, the old value keeps working until the time returned."""
    s = _Session(path, "keys rotate")
    index, start, end = s.find(name)
    entry = s.keys()[index]
    if "revoked" in entry:
        raise CommandError(f"keys rotate: key \"{name}\" in {path} is revoked, and a revoked key stays revoked; "
                           f"make a new key with `keygen` instead")
    old_hash = str(entry["key_sha256"]).lower() if "key_sha256" in entry else hash_key(str(entry.get("key", "")))
    new_hash = hash_key(new_key)
    indent = s.indent(start, end)
    current = s.line_of("key_sha256", start, end)
    if current is not None and (m := _HASH.fullmatch(_bare(s.lines[current]))):
        s.replace(current, f"{m.group(1)}\"{new_hash}\"{m.group(3)}")
    elif (current := s.line_of("key", start, end)) is not None and (m := _PLAIN_KEY.fullmatch(_bare(s.lines[current]))):
        s.replace(current, f"{m.group(1).replace('key', 'key_sha256', 1)}\"{new_hash}\"{m.group(3)}")
    else:
        raise ConfigError(f"{path}: could not find the key_sha256 line of \"{name}\" (the file's layout is unusual); "
                          f"the file was not changed")
    expected = copy.deepcopy(s.data)
    new_entry = expected["keys"][index]
    new_entry.pop("key", None)
    new_entry["key_sha256"] = new_hash
    for field in PREVIOUS:
        new_entry.pop(field, None)
    old_lines = [i for i in (s.line_of(f, start, end) for f in PREVIOUS) if i is not None]
    until = grace_end(now, grace) if grace > 0 else None
    if until is not None:
        values = {"previous_key_sha256": toml_value(old_hash), "previous_valid_until": until.strftime("%Y-%m-%dT%H:%M:%SZ")}
        new_entry.update(previous_key_sha256=old_hash, previous_valid_until=until)
        if len(old_lines) == len(PREVIOUS):
            for field, i in zip(PREVIOUS, old_lines):
                s.replace(i, _with_value(s.lines[i], field, values[field], indent))
        else:
            old_lines.sort(reverse=True)
            for i in old_lines:
                del s.lines[i]
            after = s.last_content_line(start, end - len(old_lines))
            s.insert(after, [f"{indent}{field} = {values[field]}" for field in PREVIOUS])
    else:
        for i in sorted(old_lines, reverse=True):
            del s.lines[i]
    return s.save(expected, f"rotate \"{name}\""), until
