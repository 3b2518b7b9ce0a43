"""Command line: run (the default), init, keygen, keys, check, doctor, service, usage, top, unban, --version.

Argument parsing and dispatch only: `run` is app.py, every other command lives
in ops/ and declares its own arguments.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from . import __version__, app
from .config.model import DEFAULT_LISTEN, DEFAULT_UPSTREAM, LOG_LEVELS, CommandError, ConfigError
from .config.overrides import Overrides
from .config.paths import CONFIG_HELP
from .engine import logs
from .engine.loop import LOOPS
from .ops import check, doctor, keys, top, unban, usage
from .ops.winservice import commands as winservice
from .wire.printable import printable


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="guardproxy", description="An API-key gate for Ollama and other self-hosted LLM servers.")
    p.add_argument("--version", action="version", version=f"guardproxy {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser("run", help="start the proxy (the default command)")
    _run_args(run)
    run.set_defaults(func=cmd_run)
    for tool in (keys, check, doctor, winservice, usage, top, unban):
        tool.add_parser(sub)  # each defines its own arguments and sets func
    return p


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
    p.add_argument("--listen", metavar="HOST:PORT", help=f"address to listen on (default {DEFAULT_LISTEN})")
    p.add_argument("--upstream", metavar="URL", help=f"the Ollama server (default {DEFAULT_UPSTREAM})")
    p.add_argument("--loop", choices=LOOPS, default="auto", help="event loop (default: uvloop where available)")
    p.add_argument("--log-level", choices=LOG_LEVELS, metavar="LEVEL",
                   help="messages on stderr from this level up: debug, info, warning, error "
                        "(default: [log] level in the config, else info)")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        argv = ["run", *argv]
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
        return result
    except CommandError as e:  # the config is fine; what was asked cannot be done
        print(f"guardproxy: {printable(str(e))}", file=sys.stderr)
        return app.EXIT_CONFIG
    except ConfigError as e:
        print(f"guardproxy: config error: {printable(str(e))}", file=sys.stderr)
        return app.EXIT_CONFIG


def cmd_run(args: argparse.Namespace) -> int:
    logs.setup(args.log_level or "info", pinned=args.log_level is not None)
    overrides = Overrides(args.listen, args.upstream)
    try:
        config = app.resolve_config(args.config, listen=args.listen, upstream=args.upstream)
    except CommandError as e:
        logs.log.error("%s", e)
        return app.EXIT_CONFIG
    except ConfigError as e:
        logs.log.error("config error: %s", e)
        return app.EXIT_CONFIG
    return app.run(config, args.loop, overrides)
