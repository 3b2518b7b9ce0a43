"""A real browser: a page on one localhost origin streams a reply from guardproxy on another.

Runs when Debian's `chromium` is installed (apt-get install -y chromium), and is
skipped otherwise.  Chromium resolves no name but 127.0.0.1 (host-resolver
rules), so nothing leaves the machine.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import KEY, make_config
from guardproxy.engine.accesslog import AccessLog
from guardproxy.config.model import Cors
from guardproxy.testing.fake_ollama import FakeOllama
from guardproxy.engine.server import GuardServer

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")

PAGE = """<!doctype html><meta charset="utf-8"><title>guardproxy browser check</title><script>
(async () => {
  const out = {};
  try {
    const r = await fetch("%(proxy)s/api/generate", {method: "POST",
      headers: {"Content-Type": "application/json", "X-API-Key": "%(key)s"},
      body: JSON.stringify({model: "llama3.2", prompt: "hi", options: {num_predict: 12}, fake_delay: 0.01})});
    out.status = r.status;
    const reader = r.body.getReader();
    const dec = new TextDecoder();
    let text = "", reads = 0;
    for (;;) { const {done, value} = await reader.read(); if (done) break; reads++; text += dec.decode(value, {stream: true}); }
    out.reads = reads;
    out.lines = text.trim().split("\\n").map(l => JSON.parse(l));
    const e = await fetch("%(proxy)s/api/tags", {headers: {"X-API-Key": "wrong-key-0123456789"}});
    out.error_status = e.status;
    out.error_body = await e.json();
  } catch (err) { out.exception = String(err); }
  await fetch("/result", {method: "POST", body: JSON.stringify(out)});
})();
</script>"""


async def serve_page(page: dict[str, bytes], result: "asyncio.Future[dict]"):
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            line = head.split(b"\r\n", 1)[0]
            if line.startswith(b"POST /result "):
                n = int(next(h.split(b":", 1)[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")))
                body = await reader.readexactly(n)
                if not result.done():
                    result.set_result(json.loads(body))
                writer.write(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
            elif line.startswith(b"GET / "):
                html = page["html"]
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: %d\r\n"
                             b"Connection: close\r\n\r\n" % len(html) + html)
            else:
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def test_browser_streams_from_another_origin_with_an_api_key(fake: FakeOllama, tmp_path: Path) -> None:
    result: asyncio.Future[dict] = asyncio.get_running_loop().create_future()
    content: dict[str, bytes] = {}
    page = await serve_page(content, result)
    page_origin = f"http://127.0.0.1:{page.sockets[0].getsockname()[1]}"
    proxy = GuardServer(replace(make_config(fake.port), cors=Cors((page_origin,))), access_log=AccessLog(""))
    await proxy.start()
    # Two origins: the page's port and guardproxy's port differ.
    content["html"] = (PAGE % {"proxy": f"http://127.0.0.1:{proxy.port}", "key": KEY}).encode()
    browser = await asyncio.create_subprocess_exec(
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--no-first-run", "--no-default-browser-check", "--disable-sync", "--disable-extensions",
        "--disable-component-update", "--disable-default-apps", "--no-proxy-server",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        f"--user-data-dir={tmp_path / 'profile'}", page_origin + "/",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        out = await asyncio.wait_for(result, 60)
    finally:
        if browser.returncode is None:
            browser.kill()
        await asyncio.wait_for(browser.wait(), 10)
        page.close()
        await page.wait_closed()
        await proxy.stop(grace=0)
    assert "exception" not in out, out
    # A readable 200 means the preflight and the response's CORS headers were right.
    assert out["status"] == 200
    lines = out["lines"]
    assert len(lines) == 13 and lines[-1]["done"] is True and lines[-1]["eval_count"] == 12
    assert "".join(l["response"] for l in lines) == "".join(f" tok{i}" for i in range(12))
    assert out["reads"] > 1  # streamed, not one buffered body
    # guardproxy's own 401 is readable by the page, thanks to its CORS headers.
    assert out["error_status"] == 401 and out["error_body"] == {"error": "unauthorized"}
