"""The things being measured: each started on a loopback port, stopped afterwards.

`direct` is the fake Ollama itself (no proxy: the physical limit).  The others
sit in front of their own fresh fake Ollama, configured as the seed recipe:
an X-API-Key check, a /health route, streams unbuffered, Host rewritten to
the upstream's own authority, one JSON/text access-log line per request to a
file.  Each peer gets its documented best settings for this load: an upstream
keep-alive pool larger than the number of client connections (nginx
`keepalive 1024`; Caddy `keepalive_idle_conns 512`, `keepalive_idle_conns_per_host
256`, `keepalive 60s`: Caddy's default keeps 32 idle connections per host and,
under 64 client connections, opens and closes upstream connections all the time),
and Caddy's immediate flushing (`flush_interval -1`).  Every proxy runs on one core (`taskset -c 0`); the fake Ollama runs on
the other core with the load generators.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KEY = "gp_bench-0123456789abcdefghijklmnopqrstuvwxyzABCD"
PROXY_CORE = "0"
CLIENT_CORE = "1"
# The seed recipe writes an access log from every proxy; `bench.py --no-logs` turns them all off,
# which measures each proxy's own path (Caddy's log alone costs it 40-60 µs per request).
ACCESS_LOGS = [True]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pinned(core: str, argv: list[str]) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        return ["taskset", "-c", core] + argv
    return argv


def _wait_ready(port: int, proc: subprocess.Popen[bytes], path: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{port}{path}"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with code {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"not ready on port {port} after {timeout:.0f}s")


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def start_fake(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    log = open(workdir / "fake_ollama.log", "wb")
    proc = subprocess.Popen(
        pinned(CLIENT_CORE, [sys.executable, "-m", "guardproxy.testing.fake_ollama", "--host", "127.0.0.1",
                             "--port", str(port), "--loop", "auto"]),
        stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    _wait_ready(port, proc, "/api/version")
    return proc, port


class Target:
    """One system under test; `pid` is the proxy process (None for direct)."""

    name = ""
    needs = ""  # the executable that must exist, or "" for none

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir / self.name
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = 0
        self.pid: int | None = None
        self.version = ""
        self._fake: subprocess.Popen[bytes] | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def available(cls) -> str | None:
        """None when it can run here, else a note saying why not."""
        if cls.needs and shutil.which(cls.needs) is None:
            return f"{cls.name}: `{cls.needs}` not installed (run `make bench-deps`), skipped"
        return None

    def start(self) -> None:
        self._fake, up_port = start_fake(self.workdir)
        try:
            self._start_proxy(up_port)
        except Exception:
            self.stop()
            raise

    def _start_proxy(self, up_port: int) -> None:
        raise NotImplementedError

    def _launch(self, argv: list[str], ready_path: str = "/health", env: dict[str, str] | None = None) -> None:
        log = open(self.workdir / "stderr.log", "wb")
        self._proc = subprocess.Popen(pinned(PROXY_CORE, argv), stdout=log, stderr=subprocess.STDOUT,
                                      cwd=self.workdir, env=env)
        self.pid = self._proc.pid
        _wait_ready(self.port, self._proc, ready_path)

    def stop(self) -> None:
        _stop(self._proc)
        _stop(self._fake)
        self._proc = self._fake = None


class Direct(Target):
    name = "direct"

    def start(self) -> None:
        self._fake, self.port = start_fake(self.workdir)
        self.version = "fake Ollama, no proxy"


class GuardProxy(Target):
    name = "guardproxy"

    def _start_proxy(self, up_port: int) -> None:
        import uvloop  # noqa: F401  (the benchmark is of the production set-up)
        from guardproxy import __version__
        self.port = free_port()
        config = self.workdir / "guardproxy.toml"
        config.write_text(
            f'listen = "127.0.0.1:{self.port}"\n'
            f'upstream = "http://127.0.0.1:{up_port}"\n\n'
            f'[[keys]]\nname = "bench"\nkey_sha256 = "{hashlib.sha256(KEY.encode()).hexdigest()}"\n\n'
            f'[log]\naccess = "{self.workdir / "access.log" if ACCESS_LOGS[0] else ""}"\n\n'
            f'[timeouts]\ngrace = "1s"\n\n'
            # 1,000 benchmark streams come from one address; the default cap is 256.
            f'[server]\nmax_connections_per_ip = 100000\n')
        log = "access log to a file" if ACCESS_LOGS[0] else "no access log"
        self.version = f"guardproxy {__version__} (uvloop, {log})"
        self._launch([sys.executable, "-m", "guardproxy", "run", "--config", str(config), "--loop", "uvloop"])


_NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile 16384;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log {access_log};
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    upstream ollama {{
        server 127.0.0.1:{up};
        keepalive 1024;
        keepalive_requests 1000000;
        keepalive_timeout 60s;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = /health {{ return 200 "OK"; }}
        location / {{
            if ($http_x_api_key != "{key}") {{ return 401; }}
            proxy_pass http://ollama;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host 127.0.0.1:{up};
            proxy_set_header X-API-Key "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 600s;
        }}
    }}
}}
"""


class Nginx(Target):
    name = "nginx"
    needs = "nginx"

    def _start_proxy(self, up_port: int) -> None:
        self.port = free_port()
        conf = self.workdir / "nginx.conf"
        conf.write_text(_NGINX_CONF.format(dir=self.workdir, up=up_port, port=self.port, key=KEY,
                                           access_log=f"{self.workdir}/access.log" if ACCESS_LOGS[0] else "off"))
        out = subprocess.run(["nginx", "-v"], capture_output=True, text=True)
        self.version = (out.stderr or out.stdout).strip().split(":", 1)[-1].strip()
        # master_process off: one process does all the work, so /proc/PID is all of it.
        self._launch(["nginx", "-p", str(self.workdir), "-c", str(conf), "-e", str(self.workdir / "error.log")])


_CADDYFILE = """\
{{
    admin off
    auto_https off
}}
http://127.0.0.1:{port} {{
{log}    handle /health {{
        respond "OK" 200
    }}
    handle {{
        @nokey not header X-API-Key "{key}"
        respond @nokey 401
        reverse_proxy 127.0.0.1:{up} {{
            header_up Host {{upstream_hostport}}
            header_up -X-API-Key
            flush_interval -1
            transport http {{
                keepalive 60s
                keepalive_idle_conns 512
                keepalive_idle_conns_per_host 256
            }}
        }}
    }}
}}
"""


class Caddy(Target):
    name = "caddy"
    needs = "caddy"

    def _start_proxy(self, up_port: int) -> None:
        self.port = free_port()
        conf = self.workdir / "Caddyfile"
        log = f"    log {{\n        output file {self.workdir}/access.log\n    }}\n" if ACCESS_LOGS[0] else ""
        conf.write_text(_CADDYFILE.format(dir=self.workdir, up=up_port, port=self.port, key=KEY, log=log))
        out = subprocess.run(["caddy", "version"], capture_output=True, text=True)
        self.version = "caddy " + out.stdout.strip().split()[0] if out.stdout.strip() else "caddy"
        env = dict(os.environ, XDG_DATA_HOME=str(self.workdir), XDG_CONFIG_HOME=str(self.workdir),
                   HOME=str(self.workdir))
        self._launch(["caddy", "run", "--config", str(conf), "--adapter", "caddyfile"], env=env)


TARGETS: dict[str, type[Target]] = {t.name: t for t in (Direct, GuardProxy, Nginx, Caddy)}


# --- /proc of the proxy process only ------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float:
    """User + system CPU of the process (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0
