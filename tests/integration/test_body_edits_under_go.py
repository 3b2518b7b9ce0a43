"""Bodies the gate rewrites (aliases, clamps) and lets through (web search, placement) read by Go's own
encoding/json into structs shaped like Ollama's (tests/go_reader/main.go, -lines): Go must end up with the
values the gate decided on, and with every other member as the client sent it.

Bodies are generated with a fixed seed, mutating what Go's decoder treats specially: letter case and
Unicode folding of names (U+212A KELVIN SIGN, U+017F LONG S), \\u escapes, duplicates (the last wins;
repeated objects merge), null, negative, fractional and huge numbers, wrong types.
"""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path
from typing import Any

import pytest

from guardproxy.config.model import KeyEntry
from guardproxy.decisions.aliases import table
from guardproxy.decisions.body_edits import edit_body
from guardproxy.decisions.routes import route_for
from guardproxy.wire.errors import GuardError
from guardproxy.wire.heads import parse_request_head
from support.go_reader import build

BODIES = 3000
CTX, CAP = 4096, 64
CAPPED = KeyEntry("capped", b"\0" * 32, max_num_ctx=CTX, max_output_tokens=CAP)
ORDINARY = KeyEntry("ordinary", b"\0" * 32)
ALIASES = table((("gpt-4o-mini", "llama3.2:3b"),))
PATHS = ["/api/generate", "/api/chat", "/v1/chat/completions", "/v1/completions", "/v1/responses",
         "/v1/messages"]


@pytest.fixture(scope="module")
def go_reader() -> Path:
    binary = build()  # tests/go_reader/main.go, built once per session
    if binary is None:
        pytest.skip("Go is not installed (Debian's golang-go): the Go reader cannot be built")
    return binary


def read_with_go(reader: Path, bodies: list[str]) -> list[dict[str, Any]]:
    text = "".join(json.dumps(b) + "\n" for b in bodies)
    done = subprocess.run([str(reader), "-lines"], input=text, capture_output=True, text=True, check=True,
                          timeout=120)
    lines = done.stdout.splitlines()
    assert len(lines) == len(bodies)
    return [json.loads(line) for line in lines]


# --- generating bodies ---------------------------------------------------------------------------

def _spelling(rnd: random.Random, name: str) -> str:
    out = []
    for ch in name:
        r = rnd.random()
        if ch == "k" and r < 0.15:
            out.append("\u212a")
        elif ch == "s" and r < 0.15:
            out.append("\u017f")
        elif r < 0.3:
            out.append(ch.upper())
        else:
            out.append(ch)
    return "".join(out)


def _text(rnd: random.Random, s: str) -> str:
    """A JSON string, sometimes with every character escaped."""
    if rnd.random() < 0.2:
        return '"' + "".join(f"\\u{ord(c):04x}" for c in s) + '"'
    return json.dumps(s, ensure_ascii=rnd.random() < 0.5)


def _number(rnd: random.Random) -> str:
    return rnd.choice(["null", "-1", "-2", "0", "5", str(CAP - 1), str(CAP), str(CAP + 1), "100000", "1e9",
                       "3.0", "2.5", '"12"', "true", "-7", "1e400", str(CTX), str(CTX + 1)])


def _body(rnd: random.Random, path: str) -> str:
    model = rnd.choice(["gpt-4o-mini", "GPT-4o-Mini:latest", "llama3.2"])
    members = [(_spelling(rnd, "model"), _text(rnd, model)) for _ in range(rnd.choice([1, 1, 2]))]
    members.append(("prompt" if "generate" in path else "input", _text(rnd, "hi")))
    if path.startswith("/api/"):
        for _ in range(rnd.randint(0, 3)):
            names = rnd.sample(["num_ctx", "num_predict", "seed", "temperature", "NUM_CTX", "num_predict"],
                               rnd.randint(0, 4))
            inner = ",".join(f"{_text(rnd, n)}:{_number(rnd)}" for n in names)
            members.append((_spelling(rnd, "options"), "{" + inner + "}" if rnd.random() < 0.85 else "null"))
    else:
        for _ in range(rnd.randint(0, 5)):
            name = rnd.choice(["max_tokens", "max_completion_tokens", "max_output_tokens", "thinking", "tools"])
            if name == "thinking":
                value = '{"type":"enabled",%s:%s}' % (_text(rnd, _spelling(rnd, "budget_tokens")), _number(rnd))
            elif name == "tools":
                kind = rnd.choice(["function", "custom", "Web_Search", "web_search_preview"])
                value = '[{"type":%s,"name":"f"}]' % _text(rnd, kind)
            else:
                value = _number(rnd)
            members.append((_spelling(rnd, name), value))
    rnd.shuffle(members)
    return "{" + ",".join(f"{_text(rnd, k)}:{v}" for k, v in members) + "}"


def _edited(key: KeyEntry, path: str, body: str) -> str | None:
    """The body as the gate forwards it; None when it refuses it."""
    head = parse_request_head(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n".encode())
    try:
        edited = edit_body(key, route_for(b"POST", path.encode()), head, body.encode(), ALIASES)
    except GuardError:
        return None
    return body if edited.body is None else edited.body.decode()


# --- the property ---------------------------------------------------------------------------------

def _within(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and low <= value <= high


def _check(path: str, before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """What Go read from the forwarded body against the gate's decisions; [] when they agree."""
    wrong = []
    if before["model"] and before["model"].lower().split(":")[0] == "gpt-4o-mini":
        if after["model"] != "llama3.2:3b":
            wrong.append(f"model {after['model']!r}")
    elif after["model"] != before["model"]:
        wrong.append(f"model changed to {after['model']!r}")
    if path.startswith("/api/"):
        opts, was = after["options"] or {}, before["options"] or {}
        if isinstance(opts.get("num_ctx"), (int, float)) and opts["num_ctx"] > CTX:
            wrong.append(f"num_ctx {opts['num_ctx']}")
        if not isinstance(was.get("num_predict"), (str, bool)) and not (
                isinstance(opts.get("num_predict"), (int, float)) and 0 <= opts["num_predict"] <= CAP):
            wrong.append(f"num_predict {opts.get('num_predict')}")
        if {k: v for k, v in opts.items() if k not in ("num_ctx", "num_predict")} != \
                {k: v for k, v in was.items() if k not in ("num_ctx", "num_predict")}:
            wrong.append("other options changed")
    else:
        fields = {"/v1/chat/completions": ["max_tokens", "max_completion_tokens"],
                  "/v1/completions": ["max_tokens", "max_completion_tokens"],
                  "/v1/responses": ["max_output_tokens"], "/v1/messages": ["max_tokens"]}[path]
        low = 1 if path == "/v1/messages" else 0
        wrong += [f"{f} {after[f]}" for f in fields if not _within(after[f], low, CAP)]
        if path == "/v1/messages" and after["budget_tokens"] is not None \
                and isinstance(after["max_tokens"], int) and after["budget_tokens"] >= after["max_tokens"]:
            wrong.append(f"budget_tokens {after['budget_tokens']} >= max_tokens {after['max_tokens']}")
        if after["tools"] != before["tools"]:
            wrong.append("tools changed")
    return wrong


def test_rewritten_bodies_read_under_go_as_the_gate_decided(go_reader: Path) -> None:
    rnd = random.Random(20261206)
    cases = []
    for _ in range(BODIES):
        path = rnd.choice(PATHS)
        body = _body(rnd, path)
        forwarded = _edited(CAPPED, path, body)
        if forwarded is not None:
            cases.append((path, body, forwarded))
    readings = read_with_go(go_reader, [c[1] for c in cases] + [c[2] for c in cases])
    before, after = readings[:len(cases)], readings[len(cases):]
    checked, failures = 0, []
    for (path, body, forwarded), b, a in zip(cases, before, after):
        if a.get("error"):
            assert b.get("error"), f"the gate's rewrite broke a body Go read: {body} -> {forwarded}"
            continue  # Ollama refuses it itself (a wrong type), as it would the original
        if b.get("error"):
            continue  # the original was refused by Go; the cap made it readable (a huge number lowered)
        checked += 1
        wrong = _check(path, b, a)
        if wrong:
            failures.append(f"{path} {body} -> {forwarded}: {', '.join(wrong)}")
    assert not failures, "\n".join(failures[:10])
    assert checked > BODIES // 2  # most bodies are read by Go; the property was not checked vacuously


def test_bodies_let_through_without_cloud_have_no_web_search_for_go(go_reader: Path) -> None:
    rnd = random.Random(7)
    passed: list[tuple[str, str]] = []
    refused = 0
    for _ in range(1000):
        path = rnd.choice(["/v1/messages", "/v1/responses"])
        kind = rnd.choice(["web_search", "web_search_20250305", "Web_Search", "web_search_preview", "function"])
        name = _spelling(rnd, rnd.choice(["tools", "type"]) if rnd.random() < 0.1 else "tools")
        tools = '[{%s:%s,"name":"x"}]' % (_text(rnd, _spelling(rnd, "type")), _text(rnd, kind))
        body = '{"model":"llama3.2",%s:%s,"max_tokens":5}' % (_text(rnd, name), tools)
        forwarded = _edited(ORDINARY, path, body)
        if forwarded is None:
            refused += 1
        else:
            passed.append((path, forwarded))
    for (path, _), reading in zip(passed, read_with_go(go_reader, [b for _, b in passed])):
        for t in reading.get("tools") or []:
            kind = t["type"]
            assert not (kind == "web_search" if path == "/v1/responses" else kind.startswith("web_search")), \
                (path, reading)
    assert refused > 100 and len(passed) > 100


def test_bodies_let_through_for_ordinary_keys_have_no_placement_option_for_go(go_reader: Path) -> None:
    rnd = random.Random(11)
    placement = ["num_gpu", "main_gpu", "num_thread", "num_batch", "use_mmap", "draft_num_predict"]
    passed: list[str] = []
    refused = 0
    for _ in range(1000):
        members = []
        for _ in range(rnd.randint(1, 3)):
            names = rnd.sample(placement + ["seed", "NUM_GPU", "num_gpu "], rnd.randint(0, 2))
            inner = ",".join(f"{_text(rnd, n)}:1" for n in names)
            members.append(f"{_text(rnd, _spelling(rnd, 'options'))}:" + ("{" + inner + "}" if rnd.random() < 0.9
                                                                            else "null"))
        body = '{"model":"llama3.2",' + ",".join(members) + "}"
        forwarded = _edited(ORDINARY, rnd.choice(["/api/generate", "/api/chat"]), body)
        if forwarded is None:
            refused += 1
        else:
            passed.append(forwarded)
    for body, reading in zip(passed, read_with_go(go_reader, passed)):
        assert not set(reading.get("options") or {}) & set(placement), (body, reading)
    assert refused > 100 and len(passed) > 100
