"""Command line: run (the default), init, keygen, check, doctor, service, --version."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from . import __version__

from .ops import check as checklist

from .ops import doctor

from .ops import winservice
from .config.load import load_config, parse_config
from .config.model import ENV_KEY, Config, ConfigError, DEFAULT_CONFIG_NAME
from .config.paths import find_config_path
from .config.values import parse_hostport, parse_upstream
from .config.write import append_key, create_config, generate_key
from .engine.loop import LOOPS, loop_name, run as run_loop

EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="guardproxy", description="An API-key gate for Ollama and other self-hosted LLM servers.")
    p.add_argument("--version", action="version", version=f"guardproxy {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser("run", help="start the proxy (the default command)")
    _run_args(run)
    init = sub.add_parser("init", help="write a fresh config with a new key")
    init.add_argument("--config", metavar="FILE", help=f"config file (default: ${{GUARDPROXY_CONFIG}} or ./{DEFAULT_CONFIG_NAME})")
    init.add_argument("--name", default="default", help="name of the first key (default: default)")
    kg = sub.add_parser("keygen", help="make a new key, add it to the config and print it once")
    kg.add_argument("--config", metavar="FILE", help="config file to add the key to")
    kg.add_argument("--name", help="a name for the key (default: key-N)")
    kg.add_argument("--admin", action="store_true",
                    help="the key may also pull, push, create, copy and delete models")
    for tool in (checklist, doctor, winservice):
        tool.add_parser(sub)  # each defines its own arguments and sets func
    us = sub.add_parser("usage", help="summarise the access log: requests, tokens, errors, probing addresses")
    us.add_argument("--config", metavar="FILE", help="config whose log.access file to read")
    us.add_argument("--log", metavar="FILE", help="access log file to read (default: log.access of the config)")
    us.add_argument("--since", default="24h", help="only the last DURATION, e.g. 1h, 7d, or \"all\" (default 24h)")
    us.add_argument("--by", choices=("key", "model", "ip"), default="key", help="group rows by (default key)")
    return p


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help=f"config file (default: ${{GUARDPROXY_CONFIG}} or ./{DEFAULT_CONFIG_NAME})")
    p.add_argument("--listen", metavar="HOST:PORT", help="address to listen on (default 0.0.0.0:11435)")
    p.add_argument("--upstream", metavar="URL", help="the Ollama server (default http://127.0.0.1:11434)")
    p.add_argument("--loop", choices=LOOPS, default="auto", help="event loop (default: uvloop where available)")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        argv = ["run", *argv]
    args = parser.parse_args(argv)
    try:
        if args.command == "init":
            return cmd_init(args)
        if args.command == "keygen":
            return cmd_keygen(args)
        if hasattr(args, "func"):
            return args.func(args)
        if args.command == "usage":
            return cmd_usage(args)
        return cmd_run(args)
    except ConfigError as e:
        print(f"guardproxy: config error: {e}", file=sys.stderr)
        return EXIT_CONFIG


def _banner(key: str, path: Path, name: str, listen: str = "localhost:11435") -> str:
    line = "=" * 72
    return (f"{line}\n"
            f"  New API key \"{name}\" (shown only this once; only its hash is stored):\n\n"
            f"      {key}\n\n"
            f"  Config: {path.resolve()}\n"
            f"  Use it: curl -H 'X-API-Key: {key}' http://{listen}/api/tags\n"
            f"          (OpenAI SDKs: api_key=<key>, sent as Authorization: Bearer)\n"
            f"{line}")


def cmd_init(args: argparse.Namespace) -> int:
    path, _ = find_config_path(args.config)
    key = generate_key()
    create_config(path, key, args.name)
    print(_banner(key, path, args.name))
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    path, _ = find_config_path(args.config)
    key = generate_key()
    if not path.exists():
        name = args.name or "default"
        create_config(path, key, name, admin=args.admin)
        print(f"created {path} with key \"{name}\"", file=sys.stderr)
    else:
        name = args.name or _next_name(path)
        append_key(path, name, key, admin=args.admin)
        print(f"added key \"{name}\" to {path} (a [[keys]] block at its end; nothing else changed)", file=sys.stderr)
    if args.admin:
        print("this key is an admin key: it may pull, push, create, copy and delete models", file=sys.stderr)
    print(key)
    return 0


def cmd_usage(args: argparse.Namespace) -> int:
    from .config.values import parse_duration
    from .ops.usage import read_log, summarise
    try:
        since = None if args.since == "all" else parse_duration(args.since)
    except ValueError as e:
        raise ConfigError(f"--since: expected {e}") from None
    log = args.log
    if not log:
        path, _ = find_config_path(args.config)
        log = load_config(path).access_log if path.exists() else ""
        if log in ("", "-"):
            raise ConfigError(f"{path}: log.access: expected a file path to read the access log from "
                              f"(or pass --log FILE)")
    try:
        with open(log, encoding="utf-8", errors="replace") as f:
            sys.stdout.write(summarise(read_log(f), since=since, by=args.by))
    except OSError as e:
        raise ConfigError(f"{log}: cannot read: {e.strerror}") from None
    return 0


def _next_name(path: Path) -> str:
    import tomllib
    try:
        names = {k.get("name") for k in tomllib.loads(path.read_text(encoding="utf-8")).get("keys", [])}
    except Exception:
        names = set()
    n = len(names) + 1
    while f"key-{n}" in names:
        n += 1
    return f"key-{n}"


def resolve_run_config(args: argparse.Namespace) -> Config:
    """The config `run` uses, creating ./guardproxy.toml on the very first run."""
    env_key = os.environ.get(ENV_KEY) or None
    path, explicit = find_config_path(args.config)
    if path.exists() or explicit:
        if not path.exists():
            raise ConfigError(f"{path}: cannot read: no such file (create it with `python -m guardproxy init --config {path}`)")
        config = load_config(path, env_key=env_key)
    elif env_key:
        config = parse_config({}, None, env_key=env_key)
    else:
        key = generate_key()
        create_config(path, key)
        print(_banner(key, path, "default"), file=sys.stderr)
        config = load_config(path)
    if args.listen:
        try:
            host, port = parse_hostport(args.listen)
        except ValueError as e:
            raise ConfigError(f"--listen: expected {e}") from None
        config = replace(config, listen_host=host, listen_port=port)
    if args.upstream:
        try:
            config = replace(config, upstream=parse_upstream(args.upstream))
        except ValueError as e:
            raise ConfigError(f"--upstream: expected {e}") from None
    return config


def cmd_run(args: argparse.Namespace) -> int:
    config = resolve_run_config(args)
    for k in config.keys:
        if k.plaintext:
            print(f"guardproxy: warning: key \"{k.name}\" is stored in plaintext in {config.path}; "
                  f"replace it with key_sha256", file=sys.stderr)
    if "*" in config.cors.origins:
        print("guardproxy: warning: cors.origins allows \"*\": any web page can call this server "
              "with a key it holds; list your app's exact origins instead", file=sys.stderr)
    try:
        return run_loop(_serve(config), args.loop)
    except RuntimeError as e:
        print(f"guardproxy: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


async def _serve(config: Config, stop: asyncio.Event | None = None) -> int:
    """Serve until SIGINT/SIGTERM, or until `stop` is set (the Windows service sets it)."""
    from .engine.accesslog import AccessLog
    from .engine.server import GuardServer
    try:
        access_log = AccessLog(config.access_log)
    except OSError as e:
        print(f"guardproxy: config error: {config.path}: log.access: cannot open {config.access_log!r}: "
              f"{e.strerror}", file=sys.stderr)
        return EXIT_CONFIG
    from .engine.fdlimit import check_open_files
    warning = check_open_files(config.server.max_connections)
    if warning:
        print(warning, file=sys.stderr)
    server = GuardServer(config, access_log=access_log)
    try:
        await server.start()
    except OSError as e:
        print(f"guardproxy: cannot listen on {config.listen_host}:{config.listen_port}: "
              f"{e.strerror or e}", file=sys.stderr)
        return 1
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM) if stop is None else ()
    stop = asyncio.Event() if stop is None else stop
    for sig in signals:
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, AttributeError, RuntimeError):
            pass  # Windows: Ctrl+C arrives as KeyboardInterrupt / cancellation
    reloader = None
    if config.path is not None:
        from .engine.reload import Reloader
        reloader = Reloader(server, config.path, env_key=os.environ.get(ENV_KEY) or None)
        reloader.install_sighup(loop)
        watch = loop.create_task(reloader.watch())
    scheme = "https" if config.tls is not None else "http"
    print(f"guardproxy {__version__} listening on {scheme}://{config.listen_host}:{server.port} -> "
          f"http://{config.upstream.authority} ({loop_name(loop)}, {len(config.keys)} key"
          f"{'s' if len(config.keys) != 1 else ''})", file=sys.stderr, flush=True)
    try:
        await stop.wait()
    except asyncio.CancelledError:
        pass
    if reloader is not None:
        watch.cancel()
    print(f"guardproxy: shutting down (grace {config.timeouts.grace:g}s)", file=sys.stderr, flush=True)
    await server.stop()
    access_log.close()
    return 0
