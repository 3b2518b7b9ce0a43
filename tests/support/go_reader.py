"""Go's own reading of request bodies (tests/go_reader/main.go), for differential tests.

    reader = go_reader()            # built once per test session; None when `go` is absent
    [got] = reader.read_many([GoRequest("chat", body)])
    assert_same_reading(route, gate_reading, got)

One long-lived Go process reads length-prefixed requests on stdin and
answers one JSON line each, so thousands of bodies cost one process.  A
GoReading holds what Ollama's Go code makes of a body: the model its
handler uses, the model its cloud proxy looks up exactly, keep_alive in
nanoseconds, the route's output caps, the options map and the tools'
types; `ok` is False when Ollama would refuse the body itself.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pytest

from guardproxy.decisions.reading import Reading

SOURCE = Path(__file__).resolve().parent.parent / "go_reader" / "main.go"
# Go's non-pointer int fields read absent or null as 0 (anthropic.MessagesRequest.MaxTokens, ThinkingConfig).
_BATCH = 64  # answers per batch: well under a pipe's 64 KiB
_ZERO_WHEN_UNSET = {("messages", "max_tokens"), ("messages", "thinking.budget_tokens")}


@dataclass(frozen=True)
class GoRequest:
    route: str                       # a route name of decisions/routes.py
    body: bytes                      # as Ollama receives it (after any zstd decoding)
    content_type: str = ""           # for the form route
    target: str = "/"                # request target (FormValue reads its query)


@dataclass
class GoReading:
    ok: bool
    error: str = ""
    model: str = ""
    cloud_model: str | None = None   # server/cloud_proxy.go's exact lookup (None: not found / not JSON)
    keep_alive: int | None = None
    caps: dict[str, int | None] = field(default_factory=dict)
    options: dict[str, Any] | None = None
    tool_types: list[str] | None = None


def _floats(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return float(value)
    if isinstance(value, list):
        return [_floats(v) for v in value]
    if isinstance(value, dict):
        return {k: _floats(v) for k, v in value.items()}
    return value


@functools.lru_cache(maxsize=1)
def build() -> Path | None:
    """The Go reader, built once per session into a temporary directory; None without `go`."""
    go = shutil.which("go")
    if go is None:
        return None
    out = Path(tempfile.mkdtemp(prefix="guardproxy-go-reader-")) / "go_reader"
    atexit.register(shutil.rmtree, out.parent, True)
    env = {**os.environ, "GO111MODULE": "off", "GOFLAGS": ""}  # one file, standard library only
    if not (env.get("GOCACHE") or env.get("XDG_CACHE_HOME") or env.get("HOME")):
        env["GOCACHE"] = str(out.parent / "cache")  # (go refuses to build without a cache directory)
    subprocess.run([go, "build", "-o", str(out), str(SOURCE)], check=True, timeout=300,
                   capture_output=True, cwd=SOURCE.parent, env=env)
    return out


class GoReader:
    def __init__(self, binary: Path) -> None:
        self.proc = subprocess.Popen([str(binary)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def read_many(self, requests: Iterable[GoRequest]) -> list[GoReading]:
        """Go's readings, in order.  Requests go in batches small enough that Go's answers to a
        batch fit the pipe while the batch is written (one process, no threads)."""
        reqs = list(requests)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        out: list[GoReading] = []
        for start in range(0, len(reqs), _BATCH):
            batch = reqs[start:start + _BATCH]
            frames = []
            for r in batch:
                head = json.dumps({"route": r.route, "content_type": r.content_type, "target": r.target}).encode()
                frames += [struct.pack(">I", len(head)), head, struct.pack(">I", len(r.body)), r.body]
            self.proc.stdin.write(b"".join(frames))
            self.proc.stdin.flush()
            for _ in batch:
                line = self.proc.stdout.readline()
                if not line:
                    raise RuntimeError("the Go reader stopped")
                fields = json.loads(line)
                # Go's map[string]any holds float64s, written without an exponent below 1e21.
                fields["options"] = _floats(fields.get("options"))
                out.append(GoReading(**fields))
        return out

    def read(self, route: str, body: bytes, content_type: str = "", target: str = "/") -> GoReading:
        return self.read_many([GoRequest(route, body, content_type, target)])[0]

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=10)


@pytest.fixture(scope="session")
def go_reader() -> Iterable[GoReader]:
    binary = build()
    if binary is None:
        pytest.skip("the differential tests need Go (Debian's golang-go): `go` is not installed")
    reader = GoReader(binary)
    yield reader
    reader.close()


def differences(route: str, gate: Reading, go: GoReading) -> list[str]:
    """How Go's reading differs from the gate's ([] when they agree); `go.ok` must be True."""
    diffs = []
    model = gate.model or ""
    if go.model != model:
        diffs.append(f"model: gate {model!r}, Go {go.model!r}")
    if go.cloud_model is not None and go.cloud_model != model.strip():
        diffs.append(f"model: gate {model!r}, Go's cloud proxy {go.cloud_model!r}")
    if route not in ("transcriptions",):
        if go.keep_alive != gate.keep_alive_ns:
            diffs.append(f"keep_alive: gate {gate.keep_alive_ns}, Go {go.keep_alive}")
        for cap in set(go.caps) | set(gate.caps):
            mine, theirs = gate.caps.get(cap), go.caps.get(cap)
            if (route, cap) in _ZERO_WHEN_UNSET:
                mine, theirs = mine or 0, theirs or 0
            if mine != theirs:
                diffs.append(f"{cap}: gate {mine}, Go {theirs}")
        if go.options != gate.options:
            diffs.append(f"options: gate {gate.options!r}, Go {go.options!r}")
        gate_tools = None if gate.tool_types is None else list(gate.tool_types)
        if (go.tool_types or None) != (gate_tools or None):
            diffs.append(f"tools: gate {gate_tools!r}, Go {go.tool_types!r}")
    return diffs


def assert_same_reading(route: str, gate: Reading, go: GoReading, body: bytes = b"") -> None:
    """The property: Go reads what the gate decided on.  A body Ollama refuses itself (a syntax or
    type error in Go) runs nothing and passes; callers count those (see `go.ok`)."""
    if not go.ok:
        return
    diffs = differences(route, gate, go)
    assert not diffs, f"{'; '.join(diffs)} for {body[:300]!r}"
