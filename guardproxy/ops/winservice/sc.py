"""`guardproxy service ...`: guardproxy as a real Windows service.

A program registered with `sc.exe create` must answer the Service Control
Manager (SCM) or Windows kills it after 30 s with error 1053.  So the
registered command is `guardproxy.exe service run --config FILE --name NAME`,
which hands control to the SCM through pywin32's servicemanager and runs the
proxy until the SCM says stop; running streams then get the grace period.

Layout of this module: everything that decides something (service names,
paths under %ProgramData%, the exact sc.exe / netsh command lines, reading
sc.exe's answers, the rotating log file) is a pure function or a plain class
tested on any platform.  Only `_host_service` and `_service_class` touch
pywin32, and they are a few lines each.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from ...config.paths import service_config_path

DEFAULT_NAME = "guardproxy"
DISPLAY_NAME = "guardproxy (API-key gate for Ollama)"
DESCRIPTION = "API keys, health route and access logs in front of a local Ollama."
LOG_NAME = "guardproxy.log"          # the service's own messages, next to the config
ACCESS_LOG_NAME = "access.log"       # the access log when the config says "-" (stdout)
LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 5
STOP_EXTRA_S = 10.0                  # on top of the grace period, for closing and flushing
EXIT_NOT_WINDOWS = 2

# sc.exe exits with the Win32 error code of what failed.
_SC_ERRORS = {
    5: "access denied: run this from an Administrator command prompt (right-click, Run as administrator)",
    1056: "the service is already running",
    1060: "no such service is installed (install it with `guardproxy service install`)",
    1062: "the service is not running",
    1072: "the service is marked for deletion: close the Services window (services.msc) and try again",
    1073: "a service with this name already exists (remove it with `guardproxy service uninstall`, or pick --name)",
}
_SC_STATES = {1: "STOPPED", 2: "START_PENDING", 3: "STOP_PENDING", 4: "RUNNING",
              5: "CONTINUE_PENDING", 6: "PAUSE_PENDING", 7: "PAUSED"}


# --- names and paths ---------------------------------------------------------------

def validate_service_name(name: str) -> str:
    """A service name that needs no quoting anywhere (sc.exe, netsh, the registry)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}", name):
        raise ValueError(f"--name: expected letters, digits, '_', '.' or '-' (at most 64), got {name!r}")
    return name


def service_log_paths(config_path: str, pathmod: Any = os.path) -> tuple[str, str]:
    """(messages log, access log used when the config's log.access is "-"): next to the config."""
    directory = pathmod.dirname(config_path)
    return pathmod.join(directory, LOG_NAME), pathmod.join(directory, ACCESS_LOG_NAME)


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
    known = _SC_ERRORS.get(returncode)
    if known:
        return known
    text = " ".join(output.split())
    return f"sc.exe failed with error {returncode}" + (f": {text}" if text else "")


# --- the service's log file -------------------------------------------------------------

class RotatingWriter(io.TextIOBase):
    """A text stream for sys.stdout/sys.stderr of a service: a file rotated by size.

    guardproxy.log -> guardproxy.log.1 -> ... -> guardproxy.log.N, oldest dropped.
    With stamp=True each line starts with a UTC timestamp (the messages log;
    access-log lines carry their own time).
    """

    def __init__(self, path: str, max_bytes: int = LOG_MAX_BYTES, backups: int = LOG_BACKUPS,
                 *, stamp: bool = False, clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.stamp = stamp
        self.clock = clock
        self._at_line_start = True
        self._file = open(path, "ab")
        self._size = self._file.tell()

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        if self.closed:
            raise ValueError("write to closed log")
        text = self._stamped(s) if self.stamp else s
        data = text.encode("utf-8", "replace")
        if self._size and self._size + len(data) > self.max_bytes:
            self._rotate()
        self._file.write(data)
        self._file.flush()  # a service can be killed at any moment; lose nothing written
        self._size += len(data)
        return len(s)

    def _stamped(self, s: str) -> str:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%SZ ", time.gmtime(self.clock()))
        out = []
        for piece in s.splitlines(keepends=True):
            if self._at_line_start:
                out.append(prefix)
            out.append(piece)
            self._at_line_start = piece.endswith("\n")
        return "".join(out)

    def _rotate(self) -> None:
        self._file.close()
        for i in range(self.backups - 1, 0, -1):
            src = f"{self.path}.{i}"
            if os.path.exists(src):
                os.replace(src, f"{self.path}.{i + 1}")
        if self.backups > 0:
            os.replace(self.path, f"{self.path}.1")
        else:
            os.unlink(self.path)
        self._file = open(self.path, "ab")
        self._size = 0

    def flush(self) -> None:
        if not self.closed:
            self._file.flush()

    def close(self) -> None:
        if not self.closed:
            super().close()  # flushes, then marks this stream closed
            self._file.close()


# --- running sc.exe / netsh -----------------------------------------------------------------

Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


def _run(args: Sequence[str]) -> "subprocess.CompletedProcess[str]":
    return subprocess.run(list(args), capture_output=True, text=True, errors="replace")


def _sc(args: Sequence[str], run: Runner = _run) -> tuple[bool, str]:
    proc = run(args)
    out = (proc.stdout or "") + (proc.stderr or "")
    return proc.returncode == 0, out if proc.returncode == 0 else explain_sc_failure(proc.returncode, out)


def service_state(name: str, run: Runner = _run) -> str | None:
    """"RUNNING", "STOPPED", ... or None when no such service is installed."""
    proc = run(sc_args("query", name))
    if proc.returncode != 0:
        return None
    return parse_sc_state(proc.stdout or "") or "UNKNOWN"


def firewall_rule_exists(rule: str, run: Runner = _run) -> bool:
    return run(firewall_show_args(rule)).returncode == 0


# --- command line -----------------------------------------------------------------------

def add_parser(sub: Any) -> None:
    p = sub.add_parser("service", help="install and control guardproxy as a Windows service",
                       description="Register and control guardproxy as a Windows service (Windows only).")
    ssub = p.add_subparsers(dest="service_command", metavar="ACTION")
    ssub.required = True
    inst = ssub.add_parser("install", help="register the service (starts on boot) and start it")
    inst.add_argument("--config", metavar="FILE",
                      help="config file (default: %%ProgramData%%\\guardproxy\\guardproxy.toml, created if missing)")
    inst.add_argument("--open-firewall", action="store_true",
                      help="add an inbound Windows Firewall rule for the listen port")
    inst.add_argument("--no-start", action="store_true", help="register only; do not start it now")
    for verb, text in (("uninstall", "stop and remove the service (and its firewall rule)"),
                       ("start", "start the service"), ("stop", "stop the service (streams get the grace period)"),
                       ("status", "show whether the service is installed and running")):
        ssub.add_parser(verb, help=text)
    run = ssub.add_parser("run")  # what the SCM starts; no help=, so it is not listed for people
    run.add_argument("--config", metavar="FILE", required=True)
    for sp in ssub.choices.values():
        sp.add_argument("--name", default=DEFAULT_NAME, help=f"service name (default: {DEFAULT_NAME})")
    p.set_defaults(func=cmd_service)


def cmd_service(args: argparse.Namespace) -> int:
    if sys.platform != "win32":
        print("guardproxy service: Windows services exist only on Windows; elsewhere run "
              "`guardproxy run` under systemd, launchd or a container", file=sys.stderr)
        return EXIT_NOT_WINDOWS
    try:
        name = validate_service_name(args.name)
    except ValueError as e:
        print(f"guardproxy service: {e}", file=sys.stderr)
        return 2
    action = args.service_command
    if action == "run":
        return _host_service(args.config, name)
    if action == "install":
        return _install(args, name)
    if action == "uninstall":
        return _uninstall(name)
    if action == "status":
        return _status(name)
    ok, out = _sc(sc_args(action, name))
    print(f"service {name}: {action} requested" if ok else f"guardproxy service {action}: {out}",
          file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def _is_admin() -> bool:
    try:
        import ctypes
        return bool(ctypes.windll.shell32.IsUserAnAdmin())  # type: ignore[attr-defined]
    except (ImportError, AttributeError, OSError):
        return True  # cannot tell: let sc.exe answer


def _install(args: argparse.Namespace, name: str) -> int:
    from ...config.load import load_config
    from ...config.model import ConfigError
    from ...config.write import create_config, generate_key
    if not _is_admin():
        print(f"guardproxy service install: {_SC_ERRORS[5]}", file=sys.stderr)
        return 1
    frozen = bool(getattr(sys, "frozen", False))
    if not frozen:
        import importlib.util
        if importlib.util.find_spec("servicemanager") is None:  # the service host needs it
            print("guardproxy service install: pywin32 is missing: `pip install pywin32`, "
                  "or use the one-file guardproxy.exe", file=sys.stderr)
            return 1
    path = Path(service_config_path(args.config, os.environ)).resolve()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        key = generate_key()
        create_config(path, key)
        print(f"created {path}\nnew API key \"default\" (shown only this once; only its hash is stored):\n\n"
              f"    {key}\n")
    try:
        config = load_config(path)
    except ConfigError as e:
        print(f"guardproxy: config error: {e}", file=sys.stderr)
        return 2
    command = service_command_line(sys.executable, frozen, str(path), name)
    ok, out = _sc(sc_create_args(name, command))
    if not ok:
        print(f"guardproxy service install: {out}", file=sys.stderr)
        return 1
    _sc(sc_description_args(name))
    _sc(sc_failure_args(name))
    print(f"service {name} installed: starts on boot, runs {command}")
    log, _ = service_log_paths(str(path))
    print(f"logs: {log} (rotated at {LOG_MAX_BYTES // (1024 * 1024)} MiB)")
    if args.open_firewall:
        proc = _run(firewall_add_args(firewall_rule_name(name), config.listen_port))
        if proc.returncode == 0:
            print(f"firewall: inbound TCP {config.listen_port} allowed (rule \"{firewall_rule_name(name)}\")")
        else:
            print(f"guardproxy service install: could not add the firewall rule: {' '.join(proc.stdout.split())}",
                  file=sys.stderr)
            return 1
    if not args.no_start:
        ok, out = _sc(sc_args("start", name))
        print(f"service {name} started" if ok else f"guardproxy service install: start failed: {out}")
        if not ok:
            return 1
    return 0


def _uninstall(name: str) -> int:
    state = service_state(name)
    if state is None:
        print(f"guardproxy service uninstall: {_SC_ERRORS[1060]}", file=sys.stderr)
        return 1
    if state not in ("STOPPED",):
        _sc(sc_args("stop", name))
    ok, out = _sc(sc_args("delete", name))
    if not ok:
        print(f"guardproxy service uninstall: {out}", file=sys.stderr)
        return 1
    print(f"service {name} removed")
    rule = firewall_rule_name(name)
    if firewall_rule_exists(rule) and _run(firewall_delete_args(rule)).returncode == 0:
        print(f"firewall rule \"{rule}\" removed")
    return 0


def _status(name: str) -> int:
    state = service_state(name)
    if state is None:
        print(f"service {name}: not installed")
        return 3
    rule = firewall_rule_name(name)
    fw = "present" if firewall_rule_exists(rule) else "absent"
    print(f"service {name}: {state.lower()} (firewall rule \"{rule}\": {fw})")
    return 0 if state == "RUNNING" else 3


# --- the service host: the only code that needs pywin32 and Windows ---------------------------

def _host_service(config_path: str, name: str) -> int:
    try:
        import servicemanager
    except ImportError:
        print("guardproxy service run: pywin32 is missing (`pip install pywin32`)", file=sys.stderr)
        return 1
    servicemanager.Initialize()
    servicemanager.PrepareToHostSingle(_service_class(config_path, name))
    try:
        servicemanager.StartServiceCtrlDispatcher()
    except Exception as e:  # error 1063: started by hand rather than by the SCM
        print(f"guardproxy service run: only the Service Control Manager starts this ({e}); "
              f"use `guardproxy service start` or `guardproxy run`", file=sys.stderr)
        return 1
    return 0


def _service_class(config_path: str, name: str) -> type:
    import asyncio
    import threading

    import servicemanager
    import win32service
    import win32serviceutil

    from ... import app
    from ...config.model import Config, ConfigError
    from ...engine.loop import run as run_loop

    class GuardService(win32serviceutil.ServiceFramework):  # type: ignore[misc]
        _svc_name_ = name
        _svc_display_name_ = DISPLAY_NAME

        def __init__(self, args: Any) -> None:
            super().__init__(args)
            self._lock = threading.Lock()
            self._loop: asyncio.AbstractEventLoop | None = None
            self._stop: asyncio.Event | None = None
            self._stop_requested = False
            self._grace = 30.0

        def SvcDoRun(self) -> None:
            log_path, access_path = service_log_paths(config_path)
            # A service starts in C:\Windows\System32: relative paths in the config
            # (log files, TLS files) mean "next to the config" instead.
            os.chdir(os.path.dirname(config_path) or ".")
            sys.stderr = RotatingWriter(log_path, stamp=True)
            sys.stdout = RotatingWriter(access_path)  # log.access = "-" lands here
            try:
                config = app.resolve_config(config_path)
                self._grace = config.timeouts.grace
                rc = run_loop(self._main(config), "asyncio")
            except ConfigError as e:
                print(f"guardproxy: config error: {e}", file=sys.stderr)
                servicemanager.LogErrorMsg(f"guardproxy: config error: {e}")
                rc = app.EXIT_CONFIG
            except Exception as e:  # the log is the only place anyone will see it
                import traceback
                traceback.print_exc(file=sys.stderr)
                servicemanager.LogErrorMsg(f"guardproxy stopped: {e!r}; see {log_path}")
                rc = 1
            print(f"guardproxy: service stopped (exit {rc})", file=sys.stderr)
            if rc:
                # Raising makes the framework report SERVICE_STOPPED with an error
                # code, so `sc query` and services.msc show that it failed.
                raise RuntimeError(f"guardproxy exited with code {rc}; see {log_path}")

        async def _main(self, config: Config) -> int:
            with self._lock:
                self._loop = asyncio.get_running_loop()
                self._stop = asyncio.Event()
                if self._stop_requested:
                    self._stop.set()
            return await app.serve(config, stop=self._stop)

        def SvcStop(self) -> None:
            # Tell the SCM how long the grace period may take, then wake the loop.
            self.ReportServiceStatus(win32service.SERVICE_STOP_PENDING,
                                     waitHint=int((self._grace + STOP_EXTRA_S) * 1000))
            with self._lock:
                self._stop_requested = True
                if self._loop is not None and self._stop is not None:
                    self._loop.call_soon_threadsafe(self._stop.set)

        SvcShutdown = SvcStop  # Windows shutting down: the same graceful stop

    return GuardService
