"""What sc.exe and netsh are told, and what their answers mean.

Service names, the command line the Service Control Manager (SCM) runs, the
exact sc.exe / netsh argument lists and the reading of sc.exe's output are
pure functions, tested on any platform; `service_state` and
`firewall_rule_exists` run the tools through a `Runner` that tests replace.
"""

from __future__ import annotations

import re
import subprocess
from typing import Callable, Sequence

DEFAULT_NAME = "guardproxy"
DISPLAY_NAME = "guardproxy (API-key gate for Ollama)"
DESCRIPTION = "API keys, health route and access logs in front of a local Ollama."

# sc.exe exits with the Win32 error code of what failed.
SC_ERRORS = {
    5: "access denied: run this from an Administrator command prompt (right-click, Run as administrator)",
    1056: "the service is already running",
    1060: "no such service is installed (install it with `guardproxy service install`)",
    1062: "the service is not running",
    1072: "the service is marked for deletion: close the Services window (services.msc) and try again",
    1073: "a service with this name already exists (remove it with `guardproxy service uninstall`, or pick --name)",
}
_SC_STATES = {1: "STOPPED", 2: "START_PENDING", 3: "STOP_PENDING", 4: "RUNNING",
              5: "CONTINUE_PENDING", 6: "PAUSE_PENDING", 7: "PAUSED"}


# --- names -----------------------------------------------------------------------

def validate_service_name(name: str) -> str:
    """A service name that needs no quoting anywhere (sc.exe, netsh, the registry)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}", name):
        raise ValueError(f"--name: expected letters, digits, '_', '.' or '-' (at most 64), got {name!r}")
    return name


def firewall_rule_name(service_name: str) -> str:
    return service_name


# --- command lines (pure) --------------------------------------------------------------

def service_command_line(executable: str, frozen: bool, config_path: str, name: str) -> str:
    """What the SCM runs: the one-file exe itself, or python.exe -m guardproxy."""
    prefix = [executable] if frozen else [executable, "-m", "guardproxy"]
    return subprocess.list2cmdline(prefix + ["service", "run", "--config", config_path, "--name", name])


def sc_create_args(name: str, command_line: str) -> list[str]:
    # sc.exe wants "option=" and its value as two separate arguments.
    return ["sc.exe", "create", name, "binPath=", command_line, "start=", "auto",
            "DisplayName=", DISPLAY_NAME if name == DEFAULT_NAME else f"{name} ({DISPLAY_NAME})"]


def sc_description_args(name: str) -> list[str]:
    return ["sc.exe", "description", name, DESCRIPTION]


def sc_failure_args(name: str) -> list[str]:
    """Restart after a crash: 5 s, 5 s, then 60 s; the count resets after a day."""
    return ["sc.exe", "failure", name, "reset=", "86400", "actions=", "restart/5000/restart/5000/restart/60000"]


def sc_args(verb: str, name: str) -> list[str]:
    if verb not in ("start", "stop", "query", "delete", "qc"):
        raise ValueError(f"unknown sc.exe verb {verb!r}")
    return ["sc.exe", verb, name]


def firewall_add_args(rule: str, port: int) -> list[str]:
    return ["netsh", "advfirewall", "firewall", "add", "rule", f"name={rule}", "dir=in", "action=allow",
            "protocol=TCP", f"localport={port}", "enable=yes"]


def firewall_delete_args(rule: str) -> list[str]:
    return ["netsh", "advfirewall", "firewall", "delete", "rule", f"name={rule}"]


def firewall_show_args(rule: str) -> list[str]:
    return ["netsh", "advfirewall", "firewall", "show", "rule", f"name={rule}"]


def parse_sc_state(output: str) -> str | None:
    """The state name in `sc.exe query` output ("RUNNING", "STOPPED", ...), or None.

    Matches the number rather than the label, which Windows translates.
    """
    for line in output.splitlines():
        m = re.match(r"^\s*\S[^:]*:\s*([1-7])\s+([A-Z_]+)\s*$", line)
        if m and _SC_STATES[int(m.group(1))] == m.group(2):
            return m.group(2)
    return None


def explain_sc_failure(returncode: int, output: str) -> str:
    known = SC_ERRORS.get(returncode)
    if known:
        return known
    text = " ".join(output.split())
    return f"sc.exe failed with error {returncode}" + (f": {text}" if text else "")


# --- running sc.exe / netsh -----------------------------------------------------------------

Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


NOT_RUN = -1  # run_tool's return code for a program that could not be started at all


def run_tool(args: Sequence[str]) -> "subprocess.CompletedProcess[str]":
    """Run sc.exe or netsh.  A program Windows cannot start (missing, refused, a failed CreateProcess)
    is an answer with return code NOT_RUN and the reason, for the caller to report: never a traceback."""
    try:
        return subprocess.run(list(args), capture_output=True, text=True, errors="replace")
    except OSError as e:
        return subprocess.CompletedProcess(list(args), NOT_RUN, "", f"cannot run {args[0]}: {e}")


def run_sc(args: Sequence[str], run: Runner = run_tool) -> tuple[bool, str]:
    proc = run(args)
    out = (proc.stdout or "") + (proc.stderr or "")
    return proc.returncode == 0, out if proc.returncode == 0 else explain_sc_failure(proc.returncode, out)


def service_state(name: str, run: Runner = run_tool) -> str | None:
    """"RUNNING", "STOPPED", ... or None when no such service is installed."""
    proc = run(sc_args("query", name))
    if proc.returncode == NOT_RUN:
        return "UNKNOWN"   # (the service manager could not be asked: installed or not is not known)
    if proc.returncode != 0:
        return None
    return parse_sc_state(proc.stdout or "") or "UNKNOWN"


FIREWALL_PRESENT, FIREWALL_ABSENT, FIREWALL_UNKNOWN = "present", "absent", "unknown"


def parse_firewall_show(rule: str, returncode: int, output: str) -> str:
    """What `netsh advfirewall firewall show rule name=RULE` says of the rule, from what it prints.

    Present only when a line names the rule as its value ("Rule Name:   RULE", whatever the
    label's language); absent when netsh answers without naming it ("No rules match the
    specified criteria.", exit 1); unknown when it prints nothing, as a stub netsh does
    (Wine's exits 0 and says nothing): the exit code alone never makes a rule present.
    """
    text = output.strip()
    if not text:
        return FIREWALL_UNKNOWN
    named = re.compile(r"^[^:\r\n]+:[ \t]+" + re.escape(rule) + r"[ \t]*$", re.MULTILINE)
    if returncode == 0 and named.search(text):
        return FIREWALL_PRESENT
    return FIREWALL_ABSENT


def firewall_rule_state(rule: str, run: Runner = run_tool) -> str:
    """"present", "absent" or "unknown" (see parse_firewall_show)."""
    try:
        proc = run(firewall_show_args(rule))
    except OSError:  # no netsh at all
        return FIREWALL_UNKNOWN
    if proc.returncode == NOT_RUN:
        return FIREWALL_UNKNOWN
    return parse_firewall_show(rule, proc.returncode, (proc.stdout or "") + (proc.stderr or ""))


def firewall_rule_exists(rule: str, run: Runner = run_tool) -> bool:
    """True only when netsh shows the rule (never from its exit code alone)."""
    return firewall_rule_state(rule, run) == FIREWALL_PRESENT
