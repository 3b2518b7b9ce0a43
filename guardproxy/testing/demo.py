"""`make demo`: two fake Ollama hosts, guardproxy in front of them, and the verification checklist.

Everything runs on loopback in one process, so a newcomer without a GPU sees
each check pass (or fail) exactly as a client on the internet would, and
sees requests go to the host that has their model (loaded, preferably).
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from ..engine.accesslog import AccessLog
from ..wire.framing import dechunk
from ..config.load import parse_config
from ..config.write import generate_key, hash_key
from .fake_ollama import FakeOllama
from ..engine.server import GuardServer


async def _request(port: int, method: str, path: str, headers: dict[str, str] | None = None,
                   body: bytes = b"") -> tuple[int, bytes, float | None]:
    """Status, body and time to the first body line, over a raw socket."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [f"{method} {path} HTTP/1.1", f"Host: localhost:{port}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    started = time.perf_counter()
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    first = None
    chunks = []
    while data := await reader.read(65536):
        if first is None:
            first = time.perf_counter() - started
        chunks.append(data)
    writer.close()
    return status, b"".join(chunks), first


def _row(ok: bool, what: str, detail: str) -> bool:
    print(f"  {'PASS' if ok else 'FAIL'}  {what:<50} {detail}")
    return ok


async def demo() -> int:
    key = generate_key()
    # Two hosts: gpu-a has llama3.2 loaded; gpu-b has qwen3:8b, and llama3.2 on disk.
    async with await FakeOllama.start(token_delay=0.03, models=["llama3.2"], loaded=["llama3.2"]) as fake, \
            await FakeOllama.start(token_delay=0.03, models=["qwen3:8b", "llama3.2"]) as other:
        with tempfile.TemporaryDirectory() as tmp:
            log_path = Path(tmp) / "access.log"
            config = parse_config({"listen": "127.0.0.1:0",
                                   "upstreams": [{"name": "gpu-a", "url": fake.url, "max_concurrent": 2},
                                                 {"name": "gpu-b", "url": other.url, "max_concurrent": 2}],
                                   "keys": [{"name": "demo", "key_sha256": hash_key(key)}],
                                   "log": {"access": str(log_path)}}, None)
            server = GuardServer(config, access_log=AccessLog(str(log_path)))
            await server.start()
            await server.health.next_round()  # the hosts' model lists
            port = server.port
            print(f"fake Ollama hosts: gpu-a on {fake.url}, gpu-b on {other.url}; guardproxy on http://127.0.0.1:{port}")
            print(f"demo key: {key}\n")
            results = []
            status, body, _ = await _request(port, "GET", "/health")
            results.append(_row(status == 200 and body == b"OK", "GET /health without a key -> 200", f"{status} {body.decode()!r}"))
            status, body, _ = await _request(port, "GET", "/api/tags")
            results.append(_row(status == 401, "GET /api/tags without a key -> 401", f"{status} {body.decode()}"))
            status, body, _ = await _request(port, "GET", "/api/tags", {"X-API-Key": "wrong-key"})
            results.append(_row(status == 401, "GET /api/tags with a wrong key -> 401", f"{status} {body.decode()}"))
            status, body, _ = await _request(port, "GET", "/api/tags", {"X-API-Key": key})
            names = [m["name"] for m in json.loads(body)["models"]] if status == 200 else []
            results.append(_row(status == 200 and bool(names), "GET /api/tags with the key -> 200 + models", f"{status} {', '.join(names)}"))
            status, body, _ = await _request(port, "GET", "/v1/models", {"Authorization": f"Bearer {key}"})
            results.append(_row(status == 200, "GET /v1/models with Bearer (OpenAI SDKs) -> 200", str(status)))
            gen = json.dumps({"model": "llama3.2", "prompt": "Why is the sky blue?", "options": {"num_predict": 12}}).encode()
            status, body, first = await _request(port, "POST", "/api/generate", {"X-API-Key": key}, gen)
            lines = [json.loads(l) for l in dechunk(body, 1 << 20).splitlines() if l.strip()]
            text = "".join(l.get("response", "") for l in lines)
            done = lines[-1] if lines else {}
            results.append(_row(status == 200 and done.get("done") is True,
                                "POST /api/generate streams tokens",
                                f"{status}, {len(lines) - 1} tokens, first after {1000 * (first or 0):.0f} ms: {text.strip()[:30]!r}"))
            status, body, _ = await _request(port, "GET", "/ready")
            results.append(_row(status == 200, "GET /ready without a key -> 200", f"{status} {body.decode()}"))
            status, body, _ = await _request(port, "GET", "/api/ps", {"X-API-Key": key})
            loaded = [f"{m['name']} on {m['upstream']}" for m in json.loads(body)["models"]] if status == 200 else []
            results.append(_row(status == 200 and bool(loaded), "GET /api/ps: loaded models, and where", ", ".join(loaded)))
            qwen = json.dumps({"model": "qwen3:8b", "prompt": "Hi", "stream": False,
                               "options": {"num_predict": 3}}).encode()
            status, _, _ = await _request(port, "POST", "/api/generate", {"X-API-Key": key}, qwen)
            routed = [json.loads(line).get("upstream") for line in _log_lines(server, log_path)][-2:]
            results.append(_row(status == 200 and routed == ["gpu-a", "gpu-b"],
                                "each model to a host that has it (loaded first)",
                                f"llama3.2 -> {routed[0]}, qwen3:8b -> {routed[1]}"))
            await server.stop(grace=1)
            server.access_log.close()
            print("\naccess log:")
            for line in log_path.read_text().splitlines():
                print("  " + line)
    passed = sum(results)
    print(f"\n{passed}/{len(results)} checks passed")
    return 0 if passed == len(results) else 1


def _log_lines(server: GuardServer, path: Path) -> list[str]:
    server.access_log.flush()
    return [line for line in path.read_text().splitlines() if '"/api/generate"' in line]


def main() -> int:
    return asyncio.run(demo())


if __name__ == "__main__":
    sys.exit(main())
