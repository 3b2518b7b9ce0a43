"""Smoke test of the container image: build it on a Debian base made here, then run it for real.

    python packaging/container/image_smoke.py [--base IMAGE] [--image IMAGE]

With podman: makes the base with local-base.sh when it is missing (no registry needed), builds
the image with `make image`, and reports the build time and the size the image adds to its
base.  Then runs it on the host network, read-only, against the fake Ollama on 127.0.0.1:
health, 401, a keyed listing and a whole stream (`guardproxy check`'s checklist), a non-root
UID, a read-only root, access lines on stdout; a SIGTERM that lets a running stream finish and
exits 0; and the documented first run (`init` into a volume; $GUARDPROXY_API_KEY alone).

Podman is configured through $CONTAINERS_CONF only (a file in a temporary directory, unless one
is given): runc as the runtime and default ulimits within this process's hard limits, so
machines where crun or raising limits is refused work too, and nothing global changes.
Exit 0 when everything passed, or when podman is not installed (said on stdout).
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "packaging"))

from guardproxy import __version__  # noqa: E402
from guardproxy.ops.check import format_table, run_checks  # noqa: E402
from smoke_test import Checklist, Process  # noqa: E402  (the executable's smoke test: a child process's lines)

KEY = "gp_container-smoke-key-0123456789abcdefghijk"
UID = "10001"
MAX_ADDED_MB = 120.0
GRACE = 10.0                    # [timeouts] grace in the smoke config
STREAM_TOKENS, TOKEN_DELAY = 40, 0.05   # a stream of about 2 s, running when SIGTERM arrives
LISTENING = r"listening on (http://127\.0\.0\.1:\d+) -> \S+ \((\w+)"


def podman_conf(directory: Path) -> Path:
    """A containers.conf for this machine: runc where it is installed, ulimits we may set."""
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    nofile = 1048576 if nofile == resource.RLIM_INFINITY else nofile
    nproc = 32768 if nproc == resource.RLIM_INFINITY else min(nproc, 32768)
    text = f'[containers]\ndefault_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
    if shutil.which("runc"):
        text += '\n[engine]\nruntime = "runc"\n'
    path = directory / "containers.conf"
    path.write_text(text, encoding="utf-8")
    return path


class Container(Process):
    """`podman run` in the foreground; its stderr lines are watched, its stdout lines kept apart too."""

    def __init__(self, name: str, args: list[str]) -> None:
        self.name = name
        self.stdout: list[str] = []
        super().__init__(["podman", "run", "--rm", "--name", name, *args], "stderr")

    def _pump(self, pipe, watched: bool) -> None:  # type: ignore[no-untyped-def]
        super()._pump(self._kept(pipe) if pipe is self.proc.stdout else pipe, watched)

    def _kept(self, pipe):  # type: ignore[no-untyped-def]
        for line in pipe:
            self.stdout.append(line.rstrip("\n"))
            yield line

    def exec(self, *cmd: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["podman", "exec", self.name, *cmd], capture_output=True, text=True, timeout=60)

    def stop(self, timeout: float = 15.0) -> tuple[int | None, float]:
        """`podman stop` (SIGTERM, then SIGKILL after `timeout`): the exit code and the seconds it took."""
        started = time.perf_counter()
        subprocess.run(["podman", "stop", "-t", str(int(timeout)), self.name], capture_output=True, timeout=timeout + 60)
        try:
            code = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = None
        return code, time.perf_counter() - started

    def remove(self) -> None:
        if self.proc.poll() is None:
            subprocess.run(["podman", "rm", "-f", "-t", "0", self.name], capture_output=True, timeout=60)
            self.proc.wait(30)


class Stream(threading.Thread):
    """One streamed /api/generate through the gate, read line by line."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.host, port = url.removeprefix("http://").rsplit(":", 1)
        self.port = int(port)
        self.first = threading.Event()
        self.tokens = 0
        self.done = False
        self.error = ""

    def run(self) -> None:
        body = json.dumps({"model": "llama3.2", "prompt": "hello", "stream": True, "fake_delay": TOKEN_DELAY,
                           "options": {"num_predict": STREAM_TOKENS}})
        try:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
            conn.request("POST", "/api/generate", body, {"X-API-Key": KEY, "Content-Type": "application/json"})
            resp = conn.getresponse()
            for line in iter(resp.readline, b""):
                obj = json.loads(line)
                if obj.get("done"):
                    self.done = True
                elif obj.get("response"):
                    self.tokens += 1
                self.first.set()
            conn.close()
        except (OSError, http.client.HTTPException, ValueError) as e:
            self.error = f"{type(e).__name__}: {e}"
        finally:
            self.first.set()


def run(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def image_size(image: str) -> int:
    out = run(["podman", "image", "inspect", "--format", "{{.Size}}", image])
    if out.returncode != 0:
        raise SystemExit(f"FAIL: cannot inspect {image}: {out.stderr.strip()}")
    return int(out.stdout.strip())


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="Build guardproxy's container image and check it.")
    parser.add_argument("--base", default="localhost/debian-base:bookworm",
                        help="the Debian base; made with local-base.sh when missing")
    parser.add_argument("--image", default="localhost/guardproxy:smoke", help="the image to build and test")
    args = parser.parse_args(argv)
    if shutil.which("podman") is None:
        print("SKIP: the container smoke test needs podman, which is not installed "
              "(apt-get install podman buildah runc fuse-overlayfs slirp4netns uidmap debootstrap ...)")
        return 0
    expect = Checklist()
    failures = expect.failures

    with tempfile.TemporaryDirectory(prefix="guardproxy-container-") as tmp:
        env = dict(os.environ)
        if not env.get("CONTAINERS_CONF"):
            env["CONTAINERS_CONF"] = str(podman_conf(Path(tmp)))
        os.environ["CONTAINERS_CONF"] = env["CONTAINERS_CONF"]   # for every podman call below

        if run(["podman", "image", "exists", args.base]).returncode != 0:
            started = time.perf_counter()
            made = run(["sh", str(HERE / "local-base.sh"), args.base])
            if made.returncode != 0:
                print(f"FAIL: could not make the base image {args.base}:\n{made.stderr}")
                return 1
            print(f"  base {args.base} made in {time.perf_counter() - started:.0f}s")

        started = time.perf_counter()
        built = run(["make", "--no-print-directory", "-C", str(ROOT), "image",
                     f"BASE_IMAGE={args.base}", f"IMAGE={args.image}", "CONTAINER_ENGINE=podman"], env=env)
        build_s = time.perf_counter() - started
        if built.returncode != 0:
            print(f"FAIL: make image failed after {build_s:.0f}s:\n{built.stdout[-4000:]}\n{built.stderr[-4000:]}")
            return 1
        added = (image_size(args.image) - image_size(args.base)) / 1e6
        print(f"  image {args.image} built in {build_s:.0f}s (wheels included); "
              f"it adds {added:.1f} MB to its base ({image_size(args.base) / 1e6:.1f} MB)")
        expect(added <= MAX_ADDED_MB, f"the image adds at most {MAX_ADDED_MB:g} MB to its base ({added:.1f} MB)")
        meta = json.loads(run(["podman", "image", "inspect", args.image]).stdout)[0]["Config"]
        expect(meta.get("User") == f"{UID}:{UID}", f"the image runs as {UID}:{UID} (got {meta.get('User')!r})")
        expect("11435/tcp" in (meta.get("ExposedPorts") or {}), "the image exposes 11435")
        expect(meta.get("WorkingDir") == "/etc/guardproxy", "its config directory is /etc/guardproxy")

        fake = subprocess.Popen([sys.executable, "-m", "guardproxy.testing.fake_ollama", "--host", "127.0.0.1",
                                 "--port", "0", "--loop", "asyncio"], stdout=subprocess.PIPE, text=True, cwd=ROOT)
        suffix = f"{os.getpid()}"
        containers: list[Container] = []
        volume = f"guardproxy-smoke-{suffix}"
        try:
            assert fake.stdout is not None
            m = re.search(r"listening on (http://127\.0\.0\.1:\d+)", fake.stdout.readline())
            if not m:
                print("FAIL: the fake Ollama did not start")
                return 1
            upstream = m.group(1)
            mounted_config(Path(tmp), upstream, args.image, containers, suffix, expect)
            first_run(volume, upstream, args.image, containers, suffix, expect)
        finally:
            for c in containers:
                c.remove()
            run(["podman", "volume", "rm", "-f", volume])
            fake.terminate()
            fake.wait(10)
    if failures:
        for c in containers:
            print(f"  {c.name} output: {c.seen!r}")
        print(f"container smoke test FAILED: {len(failures)} problem(s)")
        return 1
    print("container smoke test passed")
    return 0


def mounted_config(tmp: Path, upstream: str, image: str, containers: list[Container], suffix: str,
                   expect: Callable[[bool, str], None]) -> None:
    """The image with a config mounted read-only at /etc/guardproxy: the checklist, then a draining stop."""
    conf_dir = tmp / "etc"
    conf_dir.mkdir()
    conf_dir.chmod(0o755)
    conf = conf_dir / "guardproxy.toml"
    conf.write_text(f'listen = "127.0.0.1:0"\nupstream = "{upstream}"\n\n[timeouts]\ngrace = "{GRACE:g}s"\n\n'
                    f'[[keys]]\nname = "smoke"\nkey_sha256 = "{hashlib.sha256(KEY.encode()).hexdigest()}"\n',
                    encoding="utf-8")
    conf.chmod(0o644)
    gate = Container(f"guardproxy-smoke-{suffix}",
                     ["--network=host", "--read-only", "-v", f"{conf_dir}:/etc/guardproxy:ro", image])
    containers.append(gate)
    started = time.perf_counter()
    m = gate.wait_for(LISTENING, 60)
    url, loop = m.group(1), m.group(2)
    print(f"  started in {time.perf_counter() - started:.1f}s: {url} ({loop}) -> {upstream}")
    expect(loop == "uvloop", f"uvloop is installed and used (got {loop})")
    expect(any(f"version {__version__}" in line for line in gate.seen), f"it is guardproxy {__version__}")

    results = run_checks(url, KEY, model="llama3.2", timeout=15)
    print(format_table(url, results))
    for r in results:
        expect(r.ok, r.name)
    uid = gate.exec("id", "-u")
    expect(uid.stdout.strip() == UID, f"the gate runs as UID {UID}, not root (got {uid.stdout.strip()!r})")
    probe = gate.exec("sh", "-c", "touch /opt/guardproxy/probe || touch /etc/guardproxy/probe")
    expect(probe.returncode != 0 and "Read-only file system" in probe.stderr,
           "the root file system and the config are read-only")
    expect(any(line.startswith("{") and '"status":401' in line for line in gate.stdout),
           "access lines are written to stdout")

    stream = Stream(url)
    stream.start()
    stream.first.wait(15)
    code, took = gate.stop(GRACE + 10)
    stream.join(15)
    print(f"  SIGTERM during a stream: stopped in {took:.2f}s (grace {GRACE:g}s), exit {code}")
    expect(not stream.error and stream.done and stream.tokens == STREAM_TOKENS,
           f"a stream running at SIGTERM finishes: {stream.tokens}/{STREAM_TOKENS} tokens, "
           f"done={stream.done} {stream.error}")
    expect(code == 0, f"exit 0 after SIGTERM (got {code})")
    expect(took < GRACE, f"the stop took less than the grace ({took:.2f}s)")
    expect(any("shutting down" in line for line in gate.seen) and not any("shutting down" in line for line in gate.stdout),
           "the shutdown is logged on stderr")


def first_run(volume: str, upstream: str, image: str, containers: list[Container], suffix: str,
              expect: Callable[[bool, str], None]) -> None:
    """The documented first run: `init` into a named volume, then the gate on it; a key in the environment."""
    init = run(["podman", "run", "--rm", "--read-only", "-v", f"{volume}:/etc/guardproxy", image, "init"], timeout=120)
    m = re.search(r"^\s+(gp_\S+)$", init.stdout, re.M)
    expect(init.returncode == 0 and m is not None and "/etc/guardproxy/guardproxy.toml" in init.stdout,
           f"`init` writes /etc/guardproxy/guardproxy.toml into a volume and prints a key (exit {init.returncode}"
           f"{': ' + init.stderr.strip() if init.returncode else ''})")
    key = m.group(1) if m else ""
    cases = [("volume", ["-v", f"{volume}:/etc/guardproxy"], key),
             ("env", ["-e", f"GUARDPROXY_API_KEY={KEY}"], KEY)]
    for what, extra, use_key in cases:
        gate = Container(f"guardproxy-smoke-{what}-{suffix}", ["--network=host", "--read-only", *extra, image,
                                                                "run", "--listen", "127.0.0.1:0", "--upstream", upstream])
        containers.append(gate)
        url = gate.wait_for(LISTENING, 60).group(1)
        results = run_checks(url, use_key, timeout=15)
        ok = [r for r in results if "401" in r.name or "with the key" in r.name]
        source = "the key `init` printed" if what == "volume" else "$GUARDPROXY_API_KEY alone"
        expect(all(r.ok for r in ok) and len(ok) == 3, f"{source}: 401 without it, 200 with it")
        code, took = gate.stop(GRACE + 10)
        print(f"  idle stop ({what}): {took:.2f}s, exit {code}")
        expect(code == 0 and took < 5, f"an idle gate stops at once with exit 0 ({took:.2f}s, exit {code})")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
