"""The issue's readings attacks over real sockets: 400 with a one-line reason, nothing reaches Ollama.

Each body here reached Ollama before and was read by Go's standard library as another model (or an
unload) than the gate checked: an RFC 2231 boundary continuation, a form in bare-LF lines,
keep_alive 5e-324, and a 1,800-byte zstd body that expands to 20 MiB of members.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import AsyncIterator

import pytest
import zstandard

from conftest import Proxy, start_proxy
from guardproxy.config.model import KeyEntry
from guardproxy.config.write import hash_key
from guardproxy.testing.fake_ollama import FakeOllama
from support.raw_http import fetch

LIMITED = "gp_grammar-limited-0123456789abcdefghijklmno"  # models = ["llama3.2"], max_keep_alive 30 min


@pytest.fixture
async def gp(fake: FakeOllama, tmp_path: Path) -> AsyncIterator[Proxy]:
    key = KeyEntry("limited", bytes.fromhex(hash_key(LIMITED)), models=("llama3.2",), max_keep_alive=1800.0)
    p = await start_proxy(fake.port, tmp_path, keys=(key,))
    try:
        yield p
    finally:
        await p.server.stop(grace=0)
        p.server.access_log.close()


def form(boundary: bytes, model: bytes, nl: bytes = b"\r\n") -> bytes:
    return (b"--" + boundary + nl + b'Content-Disposition: form-data; name="model"' + nl + nl + model + nl
            + b"--" + boundary + b"--" + nl)


CASES = [
    ("/v1/audio/transcriptions", form(b"GO", b"qwen3:480b-cloud") + form(b"GATE", b"llama3.2"),
     {"Content-Type": "multipart/form-data; boundary=GATE; boundary*0=GO"}, "RFC 2231"),
    ("/v1/audio/transcriptions", form(b"B", b"gpt-oss:120b-cloud", b"\n") + form(b"B", b"llama3.2"),
     {"Content-Type": "multipart/form-data; boundary=B"}, "boundary line"),
    ("/api/chat", b'{"model":"llama3.2","keep_alive":5e-324,"messages":[]}', {}, "unload"),
    ("/v1/chat/completions", zstandard.ZstdCompressor(level=19).compress(
        b'{"model":"llama3.2",' + b'"a":1,' * (20 * 1024 * 1024 // 6 - 10) + b'"b":1}'),
     {"Content-Encoding": "zstd"}, "top-level members"),
    ("/api/chat", b'{"model":"llama3.2","MODEL":"qwen3:480b-cloud"}', {}, "spells 'model'"),
]


@pytest.mark.parametrize("path,body,headers,reason", CASES, ids=["boundary*0", "bare-LF", "5e-324", "zstd", "case"])
async def test_readings_go_could_take_otherwise_never_reach_ollama(gp: Proxy, fake: FakeOllama, path: str,
                                                                   body: bytes, headers: dict[str, str],
                                                                   reason: str) -> None:
    r = await fetch(gp.port, "POST", path, body, {"X-API-Key": LIMITED, **headers})
    error = json.loads(r.body)["error"]
    # An unload is the key's limit (403, as keep_alive 0 is); every other reading is 400.
    assert r.status == (403 if reason == "unload" else 400) and reason in error and "\n" not in error, error
    assert fake.connections_opened == 0 and fake.requests == []
