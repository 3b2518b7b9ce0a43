"""Each script call as Redis reads it: one command with exactly the items it announces, numkeys keys,
and at least every KEYS[i] and ARGV[i] its script reads; every script declares its flags; the ACL
names every command a script calls."""

from __future__ import annotations

import re
from pathlib import Path

import hiredis
import pytest

from guardproxy.config.model import Ban, KeyEntry, Rate
from guardproxy.config.values import parse_budget
from guardproxy.engine.state.cluster import SCRIPTS, gate_acl
from guardproxy.engine.state.commands import Script, script_commands
from guardproxy.engine.state.scripts import ADMIT, AUTH_FAILED, FINISH, Calls


def read_command(script: Script, count: int, tail: bytes) -> list[bytes]:
    """The EVALSHA command parsed as a server parses it: one array, nothing left over."""
    reader = hiredis.Reader()
    reader.feed(script.evalsha(count, tail) + b"*1\r\n$4\r\nPING\r\n")   # the next pipelined command
    command = reader.gets()
    assert isinstance(command, list) and len(command) == count + 2
    assert reader.gets() == [b"PING"]   # read as a command of its own, not as arguments of this one
    return command


def highest(script: Script, name: str) -> int:
    return max((int(n) for n in re.findall(rf"{name}\[(\d+)\]".encode(), script.source)), default=0)


KEY = KeyEntry("laptop", b"\0" * 32, rate=Rate(5, 60.0), max_concurrent=2, tokens=parse_budget("100/h"))


@pytest.mark.parametrize("build", ["admit", "auth_failed", "finish"])
def test_counts_match_what_each_script_reads(build: str) -> None:
    calls = Calls(b"gp:", 15.0, 30.0)
    calls.configure(Rate(10, 1.0), Ban(after_failures=3), 8)
    script, (count, tail) = {
        "admit": (ADMIT, calls.admit("203.0.113.9", KEY, True, "gpu-a", 4, 1, b"id:1", 42)),
        "auth_failed": (AUTH_FAILED, calls.auth_failed("203.0.113.9")),
        "finish": (FINISH, calls.finish("laptop", "gpu-a", KEY.tokens, b"id:1", True, 42, 46)),
    }[build]
    command = read_command(script, count, tail)
    assert command[:2] == [b"EVALSHA", script.sha]
    numkeys = int(command[2])
    assert numkeys >= highest(script, "KEYS")
    assert len(command) - 3 - numkeys >= highest(script, "ARGV")
    assert all(k.startswith(b"gp:") for k in command[3:3 + numkeys])   # keys under the prefix (ACL ~gp:*)


def test_every_script_declares_its_flags_and_the_acl_allows_what_it_calls() -> None:
    assert SCRIPTS and all(s.source.startswith(b"#!lua") for s in SCRIPTS)
    acl = gate_acl("guardproxy:").split()
    assert acl[:4] == ["resetkeys", "~guardproxy:*", "resetchannels", "&guardproxy:*"]
    called = script_commands(SCRIPTS)
    assert {"time", "zadd", "publish"} <= called
    assert all(f"+{c}" in acl for c in called)
    assert Script("return 1", flags=("no-writes",)).source.startswith(b"#!lua flags=no-writes\n")


def test_the_documented_acl_is_the_one_the_gate_needs() -> None:
    doc = (Path(__file__).parents[3] / "docs" / "hosts-and-redis.md").read_text()
    assert f"ACL SETUSER gate on >a-long-password {gate_acl('guardproxy:')}\n" in doc
