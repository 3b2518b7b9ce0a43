"""`guardproxy service install|uninstall|start|stop|status|run`: the commands, Windows only.

`run` is what the SCM starts (see host.py); the others register and control
the service through sc.exe and netsh (see sc.py).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from ...config.load import load_config
from ...config.paths import service_config_path
from ...config.write import create_config, generate_key
from ..keys import new_key_banner
from .host import host_service
from .logfile import LOG_MAX_BYTES, service_log_paths
from .sc import (DEFAULT_NAME, FIREWALL_PRESENT, FIREWALL_UNKNOWN, SC_ERRORS, firewall_add_args,
                 firewall_delete_args, firewall_rule_exists, firewall_rule_name, firewall_rule_state, run_sc, run_tool,
                 sc_args, sc_create_args, sc_description_args, sc_failure_args, service_command_line, service_state,
                 validate_service_name)

EXIT_NOT_WINDOWS = 2


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
        return host_service(args.config, name)
    if action == "install":
        return _install(args, name)
    if action == "uninstall":
        return _uninstall(name)
    if action == "status":
        return _status(name)
    ok, out = run_sc(sc_args(action, name))
    print(f"service {name}: {action} requested" if ok else f"guardproxy service {action}: {out}",
          file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def _is_admin() -> bool:
    if sys.platform != "win32":  # ctypes.windll exists only there
        return True
    try:
        import ctypes
        return bool(ctypes.windll.shell32.IsUserAnAdmin())
    except (ImportError, AttributeError, OSError):
        return True  # cannot tell: let sc.exe answer


def _install(args: argparse.Namespace, name: str) -> int:
    if not _is_admin():
        print(f"guardproxy service install: {SC_ERRORS[5]}", file=sys.stderr)
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
        print(new_key_banner(key, path, "default"))
    config = load_config(path)   # a ConfigError is cli.main's to report
    command = service_command_line(sys.executable, frozen, str(path), name)
    ok, out = run_sc(sc_create_args(name, command))
    if not ok:
        print(f"guardproxy service install: {out}", file=sys.stderr)
        return 1
    run_sc(sc_description_args(name))
    run_sc(sc_failure_args(name))
    print(f"service {name} installed: starts on boot, runs {command}")
    log, _ = service_log_paths(str(path))
    print(f"logs: {log} (rotated at {LOG_MAX_BYTES // (1024 * 1024)} MiB)")
    if args.open_firewall:
        proc = run_tool(firewall_add_args(firewall_rule_name(name), config.listen_port))
        if proc.returncode == 0 and firewall_rule_state(firewall_rule_name(name)) == FIREWALL_PRESENT:
            print(f"firewall: inbound TCP {config.listen_port} allowed (rule \"{firewall_rule_name(name)}\")")
        elif proc.returncode == 0:
            # A netsh that answers 0 and then does not show the rule (Wine's is a stub) proves nothing.
            print(f"firewall: netsh accepted rule \"{firewall_rule_name(name)}\" but does not show it; "
                  f"check it with `netsh advfirewall firewall show rule name={firewall_rule_name(name)}`")
        else:
            print(f"guardproxy service install: could not add the firewall rule: {' '.join(proc.stdout.split())}",
                  file=sys.stderr)
            return 1
    if not args.no_start:
        ok, out = run_sc(sc_args("start", name))
        print(f"service {name} started" if ok else f"guardproxy service install: start failed: {out}")
        if not ok:
            return 1
    return 0


def _uninstall(name: str) -> int:
    state = service_state(name)
    if state is None:
        print(f"guardproxy service uninstall: {SC_ERRORS[1060]}", file=sys.stderr)
        return 1
    if state not in ("STOPPED",):
        run_sc(sc_args("stop", name))
    ok, out = run_sc(sc_args("delete", name))
    if not ok:
        print(f"guardproxy service uninstall: {out}", file=sys.stderr)
        return 1
    print(f"service {name} removed")
    rule = firewall_rule_name(name)
    if firewall_rule_exists(rule) and run_tool(firewall_delete_args(rule)).returncode == 0:
        print(f"firewall rule \"{rule}\" removed")
    return 0


def _status(name: str) -> int:
    state = service_state(name)
    if state is None:
        print(f"service {name}: not installed")
        return 3
    rule = firewall_rule_name(name)
    fw = firewall_rule_state(rule)
    if fw == FIREWALL_UNKNOWN:
        fw = "unknown: netsh printed nothing, so not found"
    print(f"service {name}: {state.lower()} (firewall rule \"{rule}\": {fw})")
    return 0 if state == "RUNNING" else 3
