"""Smoke test of the one-file executable: does the frozen program really work?

    python packaging/smoke_test.py [dist/guardproxy]

Starts the fake Ollama (python -m guardproxy.testing.fake_ollama) and the built
binary on 127.0.0.1 with ephemeral ports, then checks /health 200, no key
401, wrong key 401, the key 200, and a streamed generation, through both this
interpreter's checklist and the binary's own `check`, `doctor` and `service`
commands, so a module the spec failed to bundle shows up here.  Then stops
it (SIGTERM where there is one) and starts it again to kill only its first
process, as `taskkill /PID` does: nothing may be left listening, on Windows
too.  Exit code 0 when everything passed.  Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import hashlib
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from guardproxy import __version__  # noqa: E402
from guardproxy.ops.check import GENERATION_TOKENS, format_table, run_checks  # noqa: E402

KEY = "gp_smoke-test-key-0123456789abcdefghijklmnopq"
STARTUP_TIMEOUT = 30.0
# Windows' event loop rounds timers to its 15.6 ms clock: a shorter delay would send every token at once.
TOKEN_DELAY = "0.03" if sys.platform == "win32" else "0.005"  # a one-file binary unpacks itself first; the first start can be slow


class Checklist:
    """A smoke test's checks: one PASS or FAIL line each; `failures` names what failed."""

    def __init__(self) -> None:
        self.failures: list[str] = []

    def __call__(self, ok: bool, what: str) -> None:
        print(f"  {'PASS' if ok else 'FAIL'}  {what}", flush=True)  # (a pipe: each line as it is decided)
        if not ok:
            self.failures.append(what)


class Process:
    """A child process whose output lines are collected by a thread, so waiting never blocks."""

    def __init__(self, args: list[str], stream: str) -> None:
        self.args = args
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        # Set when the watched stream ends: every process holding it (a one-file exe's child too) has exited.
        self.ended = threading.Event()
        for name in ("stdout", "stderr"):
            pipe = getattr(self.proc, name)
            threading.Thread(target=self._pump, args=(pipe, name == stream), daemon=True).start()

    def _pump(self, pipe, watched: bool) -> None:  # type: ignore[no-untyped-def]
        for line in pipe:
            self.seen.append(line.rstrip("\n"))
            if watched:
                self.lines.put(line)
        if watched:
            self.ended.set()

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or self.ended.is_set() and self.lines.empty():
                raise SystemExit(f"FAIL: {self.args[0]} did not print /{pattern}/ within {timeout:g}s; "
                                 f"output so far: {self.seen!r}")
            try:
                line = self.lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            m = re.search(pattern, line)
            if m:
                return m

    def kill_first_process(self) -> int:
        """Kill only the process we started (a one-file exe's bootloader), hard: SIGKILL, or on
        Windows TerminateProcess, which is what `taskkill /F /PID` without /T does."""
        self.proc.kill()
        return self.proc.wait(15)

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc.poll() is None:
            if sys.platform == "win32":
                self.proc.terminate()
            else:
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                return None
        return self.proc.returncode


def run_binary(binary: str, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def port_closed(port: int, timeout: float) -> bool:
    """True once nothing accepts connections on 127.0.0.1:port (checked for up to `timeout` s)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        except OSError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def binary_unlocked(binary: str) -> bool:
    """No process runs the binary any more: Windows refuses to rename an executable in use."""
    moved = binary + ".moved"
    try:
        os.replace(binary, moved)
    except OSError:
        return False
    os.replace(moved, binary)
    return True


def start_gate(binary: str, config: Path) -> tuple[Process, str, str]:
    gate = Process([binary, "run", "--config", str(config)], "stderr")
    m = gate.wait_for(r"listening on (http://127\.0\.0\.1:(\d+)) -> \S+ \((\w+)", STARTUP_TIMEOUT)
    return gate, m.group(1), m.group(3)


def stop_by_killing_the_first_process(binary: str, gate: Process, url: str, expect: "Checklist") -> None:
    """PyInstaller #4858: a one-file exe is two processes, and whoever stops it stops the first one
    (`taskkill /PID` without /T, a service manager, a supervisor).  The child must notice, stop
    gracefully and leave nothing listening."""
    port = int(url.rsplit(":", 1)[1])
    try:
        code = gate.kill_first_process()
        expect(code != 0, f"the first process of the binary was killed hard (exit {code})")
        try:
            gate.wait_for(r"shutting down \(grace", 20)
            graceful = True
        except SystemExit:
            graceful = False
        expect(graceful, "its child noticed and shut down gracefully")
        expect(gate.ended.wait(20), "its child exited")
        expect(port_closed(port, 10), f"nothing listens on port {port} after the first process was killed")
        if sys.platform == "win32":
            expect(binary_unlocked(binary), "no process holds the binary any more (it can be replaced)")
    finally:
        if not gate.ended.is_set() and sys.platform == "win32":
            # Clean up whatever was left, so that the next build can replace the binary.
            subprocess.run(["taskkill", "/F", "/T", "/IM", Path(binary).name], capture_output=True,
                           stdin=subprocess.DEVNULL)


def main(argv: list[str]) -> int:
    binary = str(Path(argv[0] if argv else ROOT / "dist" / ("guardproxy.exe" if os.name == "nt" else "guardproxy")).resolve())
    if not Path(binary).is_file():
        print(f"FAIL: no executable at {binary}; build it with `make exe`", file=sys.stderr)
        return 1
    expect = Checklist()
    failures = expect.failures

    started = time.perf_counter()
    version = run_binary(binary, "--version")
    expect(version.returncode == 0 and version.stdout.strip() == f"guardproxy {__version__}",
           f"--version prints guardproxy {__version__} (got {version.stdout.strip()!r})")

    fake = Process([sys.executable, "-m", "guardproxy.testing.fake_ollama", "--host", "127.0.0.1", "--port", "0",
                    "--token-delay", TOKEN_DELAY, "--loop", "asyncio"], "stdout")
    gate: Process | None = None
    with tempfile.TemporaryDirectory(prefix="guardproxy-smoke-") as tmp:
        try:
            upstream = fake.wait_for(r"listening on (http://127\.0\.0\.1:\d+)", 15).group(1)
            config = Path(tmp) / "guardproxy.toml"
            config.write_text(f'listen = "127.0.0.1:0"\nupstream = "{upstream}"\n\n[log]\naccess = ""\n\n'
                              f'[[keys]]\nname = "smoke"\nkey_sha256 = "{hashlib.sha256(KEY.encode()).hexdigest()}"\n',
                              encoding="utf-8")
            gate, url, loop = start_gate(binary, config)
            print(f"  binary started in {time.perf_counter() - started:.1f}s: {url} ({loop}) -> {upstream}")
            if sys.platform != "win32":
                expect(loop == "uvloop", f"uvloop is bundled and used (got {loop})")

            results = run_checks(url, KEY, model="llama3.2", timeout=15)
            print(format_table(url, results))
            for r in results:
                expect(r.ok, r.name)
            gen = results[-1]
            expect(gen.detail.startswith(f"{GENERATION_TOKENS} tokens"),
                   f"all {GENERATION_TOKENS} streamed tokens arrived ({gen.detail})")

            own = run_binary(binary, "check", url, "--key", KEY, "--model", "llama3.2")
            expect(own.returncode == 0 and "0 failed" in own.stdout,
                   f"the binary's own `check` passes (exit {own.returncode})")
            doctor = run_binary(binary, "doctor", "--config", str(config))
            expect(f"upstream {upstream} is Ollama" in doctor.stdout,
                   f"the binary's `doctor` reaches the upstream (exit {doctor.returncode})")
            service = run_binary(binary, "service", "status")
            if sys.platform != "win32":
                expect(service.returncode == 2 and "only on Windows" in service.stderr,
                       "`service` explains it is Windows-only")
            if sys.platform != "win32":
                # SIGTERM to the first process: it passes the signal on, the server stops gracefully.
                port = int(url.rsplit(":", 1)[1])
                code = gate.stop()
                expect(code == 0, f"the binary stops cleanly on SIGTERM (exit {code})")
                expect(port_closed(port, 10), f"nothing listens on port {port} after SIGTERM")
                gate, url, _ = start_gate(binary, config)
            # Windows has no SIGTERM to pass on: the first process is ended hard (on Linux too, here).
            stop_by_killing_the_first_process(binary, gate, url, expect)
        finally:
            if gate is not None:
                gate.stop()
            fake.stop()
    if failures:
        print(f"smoke test FAILED: {len(failures)} problem(s); binary output: {gate.seen if gate else []!r}")
        return 1
    print(f"smoke test passed in {time.perf_counter() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
