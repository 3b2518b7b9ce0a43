"""Commands as RESP sends them: packed by hiredis, and scripts, whose arguments may be encoded ahead."""

from __future__ import annotations

import hashlib
import re
from typing import Callable, Iterable, Union, cast

import hiredis

Arg = Union[bytes, str, int, float]
Reply = Union[bytes, int, None, list["Reply"]]

# hiredis's stub types the command as a 1-tuple; it takes any length.
pack = cast(Callable[[tuple[Arg, ...]], bytes], hiredis.pack_command)


class Script:
    """A Lua script and its SHA1, which is what EVALSHA sends.

    The source starts with a shebang declaring the script's flags (Redis 7, Valkey): with it Redis
    decides before the script runs whether it may run, so a script that writes is refused whole
    under OOM (maxmemory reached) and on a replica.  Without one, Redis checks memory only until
    the script's first write and lets every later write through, half an admission included.
    `flags` are Redis's names ("no-writes", "allow-oom", ...); none means "may write, deny under OOM".
    """

    __slots__ = ("source", "sha")

    def __init__(self, source: str | bytes, *, flags: tuple[str, ...] = ()) -> None:
        text = source.encode() if isinstance(source, str) else source
        if not text.startswith(b"#!"):
            text = (b"#!lua flags=" + ",".join(flags).encode() if flags else b"#!lua") + b"\n" + text
        self.source = text
        self.sha = hashlib.sha1(self.source).hexdigest().encode()

    def evalsha(self, count: int, tail: bytes) -> bytes:
        """The EVALSHA command for `count` encoded items (numkeys, keys, args) in `tail`."""
        return b"*%d\r\n$7\r\nEVALSHA\r\n$40\r\n%s\r\n%s" % (count + 2, self.sha, tail)


class Args:
    """Arguments encoded as RESP sends them, and how many they are.

    Counts are added up as parts are joined, never written by hand: a wrong count would make
    Redis read the next pipelined command as arguments of this one.
    """

    __slots__ = ("count", "data")

    def __init__(self, count: int, data: bytes) -> None:
        self.count = count
        self.data = data

    @classmethod
    def of(cls, *args: Arg) -> Args:
        return cls(len(args), encode(args)) if args else cls(0, b"")

    def __add__(self, other: Args) -> Args:
        return Args(self.count + other.count, self.data + other.data)


def one(arg: bytes) -> Args:
    return Args(1, bulk(arg))


def script_tail(keys: Args, args: Args) -> tuple[int, bytes]:
    """EVALSHA's (count, tail) after the SHA: numkeys, the keys, the arguments (see Script.evalsha)."""
    return 1 + keys.count + args.count, bulk(b"%d" % keys.count) + keys.data + args.data


def bulk(arg: bytes) -> bytes:
    """One argument as RESP sends it."""
    return b"$%d\r\n%s\r\n" % (len(arg), arg)


def encode(args: tuple[Arg, ...]) -> bytes:
    """Arguments as RESP sends them after a command's name (as `bulk` each; hiredis packs them)."""
    packed = pack(args)
    return packed[packed.index(b"\r\n") + 2:]


def script_commands(scripts: Iterable[Script]) -> set[str]:
    """The commands the scripts call (an ACL must allow each: Redis checks them inside scripts too)."""
    found: set[str] = set()
    for script in scripts:
        found.update(m.decode().lower() for m in re.findall(rb"redis\.p?call\(\s*['\"]([A-Za-z]+)['\"]", script.source))
    return found
