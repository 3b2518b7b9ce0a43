"""The wheels the container image installs, made on the host:

    python3 packaging/container/wheels.py DIR [--python-version 3.11]

guardproxy's own wheel (`pip wheel --no-deps .`), then its dependencies as binary wheels for the
image's Python (Debian bookworm's python3 is 3.11) and the host's architecture (`pip download
--only-binary`), so a host whose own Python differs still fills DIR with wheels the image can
install.  DIR is emptied first and becomes the build context: the build installs from it with
`--no-index`, and nothing inside the build reaches a package index.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ARCHES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}
# manylinux tags a Debian bookworm image (glibc 2.36) runs, newest first.
GLIBC_MINORS = range(36, 16, -1)


def platforms(machine: str) -> list[str]:
    arch = ARCHES.get(machine.lower())
    if arch is None:
        raise SystemExit(f"wheels: no manylinux wheels for this machine ({machine}); build on x86_64 or aarch64")
    return [f"manylinux_2_{minor}_{arch}" for minor in GLIBC_MINORS] + [f"manylinux2014_{arch}"]


def pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    if subprocess.run(cmd).returncode != 0:
        raise SystemExit(f"wheels: failed: {' '.join(cmd)}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path, help="where the wheels go (emptied first)")
    parser.add_argument("--python-version", default="3.11", help="the image's Python (default 3.11, Debian bookworm's)")
    args = parser.parse_args(argv)
    out: Path = args.dir
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    pip("wheel", "--quiet", "--no-deps", "-w", str(out), str(ROOT))
    own = sorted(out.glob("guardproxy-*.whl"))
    if len(own) != 1:
        raise SystemExit(f"wheels: expected one guardproxy wheel in {out}, found {[p.name for p in own]}")
    abi = "cp" + args.python_version.replace(".", "")
    platform_args = [a for tag in platforms(platform.machine()) for a in ("--platform", tag)]
    pip("download", "--quiet", "--only-binary=:all:", "--python-version", args.python_version,
        "--implementation", "cp", "--abi", abi, "--abi", "abi3", "--abi", "none", *platform_args,
        "-d", str(out), str(own[0]))
    print(f"wheels: {len(list(out.glob('*.whl')))} wheels in {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
