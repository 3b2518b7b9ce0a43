"""Cheap attacks against a running guardproxy: what they cost it, measured from /proc.

    python benchmarks/attacks.py                    # every measurement, this checkout
    python benchmarks/attacks.py --root ../old      # the same against another checkout

1. A request body sent in 1-byte chunks (16 MiB to a model-checked key, 2 MiB
   to an ordinary one): the proxy's peak RSS and CPU, and /health latency
   (p50/p99 of requests sent every 5 ms meanwhile).
2. A 1,800-byte zstd body that expands to 20 MiB of `"a":1,` members (and the
   same members inside one nested object), to a key with a model list: CPU and
   RSS growth for one body, then /health p50/p99 while 4 of them are checked
   at once (repeated for a few seconds).
3. 3,000 connections to the TLS listener that never send a ClientHello, with
   caps of 5 per address and 20 in all: the proxy's open descriptors and RSS.
4. A hostile host whose /api/ps is 7 MB (110,000 entries, under the 8 MiB cap),
   checked every second (health_interval = 1s): /health p50/p99/max over 8 s
   (one request planned every 5 ms, each timed from its planned start) and the
   proxy's CPU meanwhile; the same with an honest host first, as the baseline.

The proxy runs alone on core 0 with its access log off; traffic only goes to
127.0.0.1, is bounded in count and time, and every measurement stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
KEY = "gp_attack-0123456789abcdefghijklmnopqrstuvwxyz"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_stat(pid: int) -> tuple[float, int, int]:
    """(CPU seconds, RSS KiB, peak RSS KiB) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / tick
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(status.split("VmRSS:")[1].split()[0])
    hwm = int(status.split("VmHWM:")[1].split()[0])
    return cpu, rss, hwm


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def start_proxy(root: Path, workdir: Path, extra: str = "", upstream: int = 0) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    config = workdir / "guardproxy.toml"
    config.write_text(f"""listen = "127.0.0.1:{port}"
upstream = "http://127.0.0.1:{upstream or free_port()}"

[log]
access = ""

[[keys]]
name = "app"
key_sha256 = "{hashlib.sha256(KEY.encode()).hexdigest()}"
{extra}
""")
    argv = [sys.executable, "-m", "guardproxy", "run", "--config", str(config)]
    if shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        argv = ["taskset", "-c", "0"] + argv
    proc = subprocess.Popen(argv, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, port
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(proc.stderr.read().decode() if proc.stderr else "proxy exited")
            time.sleep(0.05)
    raise RuntimeError("proxy did not start")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


_PROBE = """
import socket, sys, time
port = int(sys.argv[1])
fixed = len(sys.argv) > 2  # latency from each request's planned time (no coordinated omission)
planned = time.perf_counter()
while True:
    t0 = planned if fixed else time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET /health HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n")
            while s.recv(4096):
                pass
        print((time.perf_counter() - t0) * 1000, flush=True)
    except OSError:
        print(10000.0, flush=True)
    if fixed:
        planned += 0.005
        time.sleep(max(0.0, planned - time.perf_counter()))
    else:
        time.sleep(0.005)
"""


class HealthProbe:
    """GET /health every 5 ms from a process of its own, so the attacker's busy loop cannot delay it.

    `fixed`: one request planned every 5 ms, each timed from its planned start, so a stall of
    the proxy counts for every request it held back (not only the one that was waiting).
    """

    def __init__(self, port: int, fixed: bool = False) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _PROBE, str(port)] + (["fixed"] if fixed else []),
                                     stdout=subprocess.PIPE, text=True)

    def stop(self) -> list[float]:
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=10)
        return [float(x) for x in out.split()]


def threaded_server(serve: Callable[[socket.socket], None], done: threading.Event) -> tuple[int, threading.Event]:
    """A loopback listener that runs `serve` in a thread per connection until `done` is set; (port, done)."""
    listener = socket.create_server(("127.0.0.1", 0))

    def accept() -> None:
        listener.settimeout(0.2)
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            threading.Thread(target=serve, args=(conn,), daemon=True).start()
        listener.close()

    threading.Thread(target=accept, daemon=True).start()
    return int(listener.getsockname()[1]), done


def sink_upstream() -> tuple[int, threading.Event]:
    """An upstream that reads whatever it is sent and answers each request with a small 200."""
    done = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            data = b""
            while not done.is_set():
                got = conn.recv(1 << 16)
                if not got:
                    return
                data += got
                head, sep, rest = data.partition(b"\r\n\r\n")
                if not sep:
                    data = data[-(1 << 16):]
                    continue
                length = [int(line.split(b":", 1)[1]) for line in head.lower().split(b"\r\n")
                          if line.startswith(b"content-length:")]
                if length and len(rest) >= length[0] or not length and rest.endswith(b"0\r\n\r\n"):
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                    data = b""
                elif not length:
                    data = head + sep + rest[-16:]

    return threaded_server(serve, done)


def _ps_entries(n: int) -> bytes:
    entry = b'{"name":"m%06d:latest","model":"m%06d:latest","size":1,"x":1}'  # 64 bytes with its comma
    return b'{"models":[' + b",".join(entry % (i, i) for i in range(n)) + b"]}"


def hostile_upstream(ps: bytes) -> tuple[int, threading.Event]:
    """A host that answers GET / as Ollama does and GET /api/ps with `ps` (keep-alive, any number of requests)."""
    done = threading.Event()
    answers = {b"/": b"Ollama is running", b"/api/ps": ps, b"/api/tags": b'{"models":[]}'}

    def serve(conn: socket.socket) -> None:
        with conn:
            data = b""
            while not done.is_set():
                try:
                    got = conn.recv(1 << 16)
                except OSError:
                    return
                if not got:
                    return
                data += got
                while b"\r\n\r\n" in data:
                    head, data = data.split(b"\r\n\r\n", 1)
                    target = head.split(b" ", 2)[1] if b" " in head else b"/"
                    body = answers.get(target, b'{"error":"not found"}')
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                                 % len(body) + body)

    return threaded_server(serve, done)


async def hostile_listing(port: int, pid: int, seconds: float) -> dict[str, float | str]:
    """/health latency while the health checks read the hostile host's /api/ps once a second."""
    cpu0, _, _ = proc_stat(pid)
    probe = HealthProbe(port, fixed=True)
    await asyncio.sleep(seconds)
    samples = probe.stop()
    cpu1, _, hwm = proc_stat(pid)
    return {"health_samples": f"{len(samples)}", "health_p50_ms": pct(samples, 0.5),
            "health_p99_ms": pct(samples, 0.99), "health_max_ms": max(samples, default=float("nan")),
            "cpu_s": cpu1 - cpu0, "rss_peak_mib": hwm / 1024}


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * p))] if s else float("nan")


async def tiny_chunks(port: int, pid: int, payload: int, timeout: float = 120.0) -> dict[str, float | str]:
    """Send `payload` bytes of a JSON body in 1-byte chunks; what it cost the proxy."""
    body = (b'{"model":"llama3.2","prompt":"' + b"x" * max(0, payload - 34) + b'"}')[:payload]
    cpu0, rss0, _ = proc_stat(pid)
    probe = HealthProbe(port)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /api/generate HTTP/1.1\r\nHost: x\r\nX-API-Key: " + KEY.encode()
                 + b"\r\nTransfer-Encoding: chunked\r\n\r\n")
    answer = b""
    started = time.monotonic()
    try:
        step = 4096  # 1-byte chunks, written a page of them at a time
        for i in range(0, len(body), step):
            writer.write(b"".join(b"1\r\n" + body[j:j + 1] + b"\r\n" for j in range(i, min(i + step, len(body)))))
            await writer.drain()
            if time.monotonic() - started > timeout:
                break
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(200), timeout)
    except (OSError, asyncio.TimeoutError):
        answer = answer or await _maybe(reader)
    finally:
        writer.close()
    wall = time.monotonic() - started
    samples = probe.stop()
    cpu1, _, hwm = proc_stat(pid)
    status = answer.split(b"\r\n", 1)[0].decode("latin-1", "replace") or "(connection closed)"
    return {"answer": status, "cpu_s": cpu1 - cpu0, "rss_start_mib": rss0 / 1024, "rss_peak_mib": hwm / 1024,
            "wall_s": wall, "health_p50_ms": pct(samples, 0.5), "health_p99_ms": pct(samples, 0.99)}


def zstd_members(nested: bool, size: int = 20 * 1024 * 1024 - 64) -> bytes:
    """A small zstd body that expands to `size` bytes of `"a":1,` members (at the top level, or nested)."""
    import zstandard
    head, tail = (b'{"model":"llama3.2","x":{', b'"b":1}}') if nested else (b'{"model":"llama3.2",', b'"b":1}')
    n = (size - len(head) - len(tail)) // 6
    return zstandard.ZstdCompressor(level=19).compress(head + b'"a":1,' * n + tail)


async def _post_zstd(port: int, body: bytes) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-API-Key: " + KEY.encode()
                     + b"\r\nContent-Encoding: zstd\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body)
                     + body)
        answer = await asyncio.wait_for(reader.read(4096), 60)
        return answer.split(b"\r\n", 1)[0].decode("latin-1", "replace")
    finally:
        writer.close()


async def zstd_bodies(port: int, pid: int, nested: bool, seconds: float = 5.0) -> dict[str, float | str]:
    """One body alone (its CPU and RSS growth), then rounds of 4 at once with /health probed meanwhile."""
    body = zstd_members(nested)
    cpu0, rss0, hwm0 = proc_stat(pid)
    answer = await _post_zstd(port, body)
    cpu1, _, hwm1 = proc_stat(pid)
    probe = HealthProbe(port)
    await asyncio.sleep(0.2)
    started, rounds = time.monotonic(), 0
    while time.monotonic() - started < seconds:
        await asyncio.gather(*(_post_zstd(port, body) for _ in range(4)))
        rounds += 1
    samples = probe.stop()
    cpu2, _, hwm2 = proc_stat(pid)
    return {"body_bytes": float(len(body)), "answer": answer, "cpu_ms_one": (cpu1 - cpu0) * 1000,
            "rss_start_mib": rss0 / 1024, "rss_growth_one_mib": (hwm1 - max(hwm0, rss0)) / 1024,
            "cpu_ms_per_body_x4": (cpu2 - cpu1) * 1000 / max(1, 4 * rounds), "rss_peak_mib": hwm2 / 1024,
            "health_p50_ms": pct(samples, 0.5), "health_p99_ms": pct(samples, 0.99)}


async def _maybe(reader: asyncio.StreamReader) -> bytes:
    try:
        return await asyncio.wait_for(reader.read(200), 1)
    except (OSError, asyncio.TimeoutError):
        return b""


async def idle_handshakes(port: int, pid: int, n: int) -> dict[str, float | str]:
    fd0, (_, rss0, _) = fds(pid), proc_stat(pid)
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.setblocking(False)
            try:
                s.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            socks.append(s)
        deadline = time.monotonic() + 5
        peak = fds(pid)
        while time.monotonic() < deadline:  # let the proxy accept what it will
            await asyncio.sleep(0.1)
            peak = max(peak, fds(pid))
        _, rss1, _ = proc_stat(pid)
    finally:
        for s in socks:
            s.close()
    return {"connections": n, "fds_before": fd0, "fds_peak": peak, "rss_growth_mib": (rss1 - rss0) / 1024}


def tls_files(workdir: Path) -> str:
    try:
        import trustme
    except ImportError:
        raise SystemExit("the TLS measurement needs trustme (pip install trustme)")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_pem.write_to_path(str(workdir / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(workdir / "cert.pem"))
    return f'\n[tls]\ncert = "{workdir / "cert.pem"}"\nkey = "{workdir / "key.pem"}"\n'


Rows = list[tuple[str, dict[str, float | str]]]


def _chunks(root: Path, work: Path, small: bool) -> Rows:
    rows: Rows = []
    models_key = '\nmodels = ["llama3.2"]\n'
    for label, extra, size in (("16 MiB in 1-byte chunks, key with models", models_key, 16 << 20),
                               ("2 MiB in 1-byte chunks, ordinary key", "", 2 << 20)):
        if small:
            size //= 64
        upstream, upstream_done = sink_upstream()
        proc, port = start_proxy(root, work, extra, upstream)
        try:
            rows.append((label, asyncio.run(tiny_chunks(port, proc.pid, size))))
        finally:
            stop(proc)
            upstream_done.set()
    return rows


def _zstd(root: Path, work: Path, small: bool) -> Rows:
    rows: Rows = []
    for label, nested in (("zstd 1.8 KB -> 20 MiB of members, key with models", False),
                          ("zstd 1.8 KB -> 20 MiB of members in one nested object", True)):
        upstream, upstream_done = sink_upstream()
        proc, port = start_proxy(root, work, '\nmodels = ["llama3.2"]\n', upstream)
        try:
            rows.append((label, asyncio.run(zstd_bodies(port, proc.pid, nested, 1.0 if small else 5.0))))
        finally:
            stop(proc)
            upstream_done.set()
    return rows


def _listing(root: Path, work: Path, small: bool) -> Rows:
    rows: Rows = []
    # The same with an honest host (3 loaded models) first: the baseline of this machine as it is now.
    for label, ps in (("honest host: 3 entries in /api/ps", _ps_entries(3)),
                      ("hostile host: {mb:.1f} MB /api/ps", _ps_entries(11_000 if small else 110_000))):
        upstream, upstream_done = hostile_upstream(ps)
        proc, port = start_proxy(root, work, '\n[routing]\nhealth_interval = "1s"\n', upstream)
        try:
            rows.append((label.format(mb=len(ps) / 1e6) + ", health_interval 1s", asyncio.run(
                hostile_listing(port, proc.pid, 3 if small else 8))))
        finally:
            stop(proc)
            upstream_done.set()
    return rows


def _tls(root: Path, work: Path, small: bool) -> Rows:
    caps = "\n[server]\nmax_connections = 20\nmax_connections_per_ip = 5\n"
    proc, port = start_proxy(root, work, caps.replace("[server]", tls_files(work) + "\n[server]"))
    try:
        return [("idle TLS handshakes, caps 5/address and 20", asyncio.run(
            idle_handshakes(port, proc.pid, 300 if small else 3000)))]
    finally:
        stop(proc)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=ROOT, help="the checkout whose guardproxy is measured")
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    p.add_argument("--only", choices=("chunks", "zstd", "listing", "tls"), help="one measurement alone")
    args = p.parse_args()
    rows: Rows = []
    small = args.quick
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.only in (None, "chunks"):
            rows += _chunks(args.root, work, small)
        if args.only in (None, "zstd"):
            rows += _zstd(args.root, work, small)
        if args.only in (None, "listing"):
            rows += _listing(args.root, work, small)
        if args.only in (None, "tls"):
            rows += _tls(args.root, work, small)
    for label, row in rows:
        print(f"{label}:")
        for k, v in row.items():
            print(f"    {k:18} {v:.2f}" if isinstance(v, float) else f"    {k:18} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
