"""guardproxy.exe as a Windows service, end to end (Windows only; `make windows` runs it under Wine).

    python packaging/windows/service_test.py dist\\guardproxy.exe

`service install` registers and starts the one-file exe with the service manager; the running
service then answers a keyed request and streams a whole generation from the fake Ollama;
`service status` says it runs and reads the firewall rule from what netsh prints; `service stop`
stops it gracefully (its log says so) and leaves nothing listening; `service uninstall` removes
it.  Exit code 0 when everything passed.  Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "packaging"))

from guardproxy.ops.check import GENERATION_TOKENS, format_table, run_checks  # noqa: E402
from guardproxy.ops.winservice.sc import service_state  # noqa: E402
from smoke_test import Checklist, Process, port_closed  # noqa: E402

KEY = "gp_service-test-key-0123456789abcdefghijklmno"
NAME = f"guardproxy-ci-{os.getpid()}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(binary: str, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([binary, *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    print(f"  $ guardproxy {' '.join(args)}  -> exit {proc.returncode}")
    for line in (proc.stdout + proc.stderr).splitlines():
        print(f"      {line}")
    return proc


def until(check: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    """Poll `check` until it holds or `timeout` seconds pass (a bounded wait on another process)."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def main(argv: list[str]) -> int:
    if sys.platform != "win32":
        print("service_test: Windows services exist only on Windows", file=sys.stderr)
        return 2
    binary = str(Path(argv[0] if argv else ROOT / "dist" / "guardproxy.exe").resolve())
    expect = Checklist()
    failures = expect.failures

    started = time.perf_counter()
    fake = Process([sys.executable, "-m", "guardproxy.testing.fake_ollama", "--host", "127.0.0.1", "--port", "0",
                    "--token-delay", "0.03", "--loop", "asyncio"], "stdout")
    installed = False
    with tempfile.TemporaryDirectory(prefix="guardproxy-service-") as tmp:
        config = Path(tmp) / "guardproxy.toml"
        try:
            upstream = fake.wait_for(r"listening on (http://127\.0\.0\.1:\d+)", 30).group(1)
            port = free_port()
            config.write_text(f'listen = "127.0.0.1:{port}"\nupstream = "{upstream}"\n\n'
                              f'[log]\naccess = "access.log"\n\n'
                              f'[[keys]]\nname = "ci"\nkey_sha256 = "{hashlib.sha256(KEY.encode()).hexdigest()}"\n',
                              encoding="utf-8")
            url = f"http://127.0.0.1:{port}"

            inst = run(binary, "service", "install", "--config", str(config), "--name", NAME)
            installed = inst.returncode == 0
            expect(installed and f"service {NAME} installed" in inst.stdout and f"service {NAME} started"
                   in inst.stdout, "`service install` registers and starts the service")
            expect(until(lambda: answers(port), 60), f"the service answers /health on {url}")

            status = run(binary, "service", "status", "--name", NAME)
            expect(status.returncode == 0 and f"service {NAME}: running" in status.stdout,
                   "`service status` says it is running")
            # Wine's netsh is a stub (exit 0, no output): the rule was never made, so never "present".
            rule = re.search(r'firewall rule "[^"]+": (\w+)', status.stdout)
            expect(rule is not None and rule.group(1) != "present",
                   f"`service status` does not claim a firewall rule netsh does not show "
                   f"({rule.group(1) if rule else 'no firewall line'})")

            results = run_checks(url, KEY, model="llama3.2", timeout=30)
            print(format_table(url, results))
            for r in results:
                expect(r.ok, f"through the service: {r.name}")
            expect(results[-1].detail.startswith(f"{GENERATION_TOKENS} tokens"),
                   f"the service streamed all {GENERATION_TOKENS} tokens ({results[-1].detail})")
            access = Path(tmp) / "access.log"
            expect(access.exists() and '"key":"ci"' in access.read_text(encoding="utf-8").replace(" ", ""),
                   "the service's access log (next to its config) names the key")

            stop = run(binary, "service", "stop", "--name", NAME)
            expect(stop.returncode == 0, "`service stop` is accepted")
            expect(until(lambda: service_state(NAME) == "STOPPED", 60),
                   f"the service manager reports it stopped ({service_state(NAME)})")
            expect(port_closed(port, 20), f"nothing listens on port {port} after `service stop`")
            log = Path(tmp) / "guardproxy.log"
            text = log.read_text(encoding="utf-8") if log.exists() else ""
            expect("shutting down (grace" in text and "service stopped (exit 0)" in text,
                   "the service stopped gracefully (its log says so)")

            status = run(binary, "service", "status", "--name", NAME)
            expect(status.returncode == 3 and f"service {NAME}: stopped" in status.stdout,
                   "`service status` says it is stopped (exit 3)")
            gone = run(binary, "service", "uninstall", "--name", NAME)
            installed = installed and gone.returncode != 0
            expect(gone.returncode == 0 and f"service {NAME} removed" in gone.stdout, "`service uninstall` removes it")
            after = run(binary, "service", "status", "--name", NAME)
            expect(after.returncode == 3 and "not installed" in after.stdout,
                   "`service status` then says it is not installed")
        finally:
            if installed:  # leave no service behind, whatever failed
                subprocess.run(["sc.exe", "stop", NAME], capture_output=True, stdin=subprocess.DEVNULL)
                subprocess.run(["sc.exe", "delete", NAME], capture_output=True, stdin=subprocess.DEVNULL)
            fake.stop()
            if failures:
                log = config.parent / "guardproxy.log"
                if log.exists():
                    print("service log:\n" + log.read_text(encoding="utf-8", errors="replace"))
    if failures:
        print(f"service test FAILED: {len(failures)} problem(s)")
        return 1
    print(f"service test passed in {time.perf_counter() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
