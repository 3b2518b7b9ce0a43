"""The container files as users get them: compose.yaml's layout and the Containerfile's promises.

`make image-smoke` builds and runs the image (podman); these checks need no container engine.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from guardproxy.config.model import DEFAULT_LISTEN, Timeouts
from guardproxy.config.values import parse_upstream

ROOT = Path(__file__).resolve().parents[2]
CONTAINER = ROOT / "packaging" / "container"
GATE_PORT = int(DEFAULT_LISTEN.rsplit(":", 1)[1])  # 11435 in the image
OLLAMA_PORT = 11434


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((CONTAINER / "compose.yaml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _service(compose: dict[str, Any], is_it: Any) -> tuple[str, dict[str, Any]]:
    found = [(name, s) for name, s in compose["services"].items() if is_it(s)]
    assert len(found) == 1, f"expected one such service, found {[n for n, _ in found]}"
    return found[0]


def ollama(compose: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return _service(compose, lambda s: re.search(r"(^|/)ollama/ollama(:|$)", s.get("image", "")))


def gate(compose: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return _service(compose, lambda s: "guardproxy" in s.get("image", "")
                    or "packaging/container/Containerfile" in str(s.get("build", "")))


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _published(port: Any) -> tuple[int, int]:
    """(host port, container port) of a `ports:` entry, short or long syntax."""
    if isinstance(port, dict):
        return int(port["published"]), int(port["target"])
    parts = str(port).split("/")[0].split(":")
    assert len(parts) >= 2, f"{port!r} publishes a random host port"
    return int(parts[-2]), int(parts[-1])


def test_two_services_ollama_and_the_gate(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {ollama(compose)[0], gate(compose)[0]}


def test_ollama_publishes_no_port(compose: dict[str, Any]) -> None:
    _, service = ollama(compose)
    assert not service.get("ports"), "a published Ollama port bypasses the gate"
    assert service.get("network_mode") is None, "Ollama stays on the project's own network"


def test_the_gate_is_published_on_ollamas_port(compose: dict[str, Any]) -> None:
    _, service = gate(compose)
    assert [_published(p) for p in service["ports"]] == [(OLLAMA_PORT, GATE_PORT)]


def test_the_gates_upstream_is_the_ollama_service(compose: dict[str, Any]) -> None:
    name, ollama_service = ollama(compose)
    command = _command(gate(compose)[1])
    assert command[:1] == ["run"] and "--upstream" in command
    url = command[command.index("--upstream") + 1]
    assert url == f"http://{name}:{OLLAMA_PORT}"
    assert parse_upstream(url).host == name  # and guardproxy reads it


def test_ollamas_host_check_lets_the_gate_in(compose: dict[str, Any]) -> None:
    # The gate sends the upstream's authority as Host ("ollama:11434").  Ollama checks Host only
    # when it listens on loopback, and accepts its own hostname anyway.
    name, service = ollama(compose)
    host, _, port = _environment(service)["OLLAMA_HOST"].rpartition(":")
    assert not ipaddress.ip_address(host.strip("[]")).is_loopback
    assert int(port) == OLLAMA_PORT
    assert service.get("hostname") == name


def test_models_live_in_a_named_volume(compose: dict[str, Any]) -> None:
    _, service = ollama(compose)
    sources = [str(v).split(":")[0] for v in service["volumes"] if str(v).split(":")[1] == "/root/.ollama"]
    assert len(sources) == 1 and sources[0] in (compose.get("volumes") or {})


def test_keys_come_from_the_environment_or_the_config_volume(compose: dict[str, Any]) -> None:
    _, service = gate(compose)
    assert "GUARDPROXY_API_KEY" in _environment(service)
    targets = {str(v).split(":")[1]: str(v).split(":")[0] for v in service["volumes"]}
    assert targets["/etc/guardproxy"] in (compose.get("volumes") or {})


def test_the_gate_runs_read_only_and_gets_time_to_drain(compose: dict[str, Any]) -> None:
    _, service = gate(compose)
    assert service["read_only"] is True
    period = re.fullmatch(r"(\d+)s", str(service["stop_grace_period"]))
    assert period and int(period.group(1)) > Timeouts().grace


def test_compose_builds_from_the_checkout(compose: dict[str, Any]) -> None:
    build = gate(compose)[1]["build"]
    context = (CONTAINER / build["context"]).resolve()
    assert context == ROOT and (context / build["dockerfile"]).is_file()
    # That context, filtered by .dockerignore, still holds what `pip wheel .` needs.
    kept = [line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")]
    assert {"guardproxy", "setup.cfg", "pyproject.toml", "README.md", "LICENSE"} <= set(kept)


def test_the_containerfile_keeps_its_promises() -> None:
    text = (CONTAINER / "Containerfile").read_text(encoding="utf-8")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert lines[0] == "ARG BASE_IMAGE=debian:bookworm-slim"
    assert [line.split()[1] for line in lines if line.startswith("FROM ")] == ["${BASE_IMAGE}", "${BASE_IMAGE}"]
    user = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert len(user) == 1 and all(part.isdigit() and int(part) > 0 for part in user[0].split(":"))
    assert f"EXPOSE {GATE_PORT}" in lines
    assert "WORKDIR /etc/guardproxy" in lines   # where guardproxy.toml is looked for
    assert "--no-index" in text                 # wheels only: no index inside the build
