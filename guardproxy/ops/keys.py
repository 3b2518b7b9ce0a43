"""`guardproxy init` and `guardproxy keygen`: new keys, shown once, stored only as their hash."""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path
from typing import Any

from ..config.paths import CONFIG_HELP, find_config
from ..config.write import append_key, create_config, generate_key


def new_key_banner(key: str, path: Path, name: str, listen: str = "localhost:11435") -> str:
    """The one time a new key is shown: by `init`, and by the first `run` that creates the config."""
    line = "=" * 72
    return (f"{line}\n"
            f"  New API key \"{name}\" (shown only this once; only its hash is stored):\n\n"
            f"      {key}\n\n"
            f"  Config: {path.resolve()}\n"
            f"  Use it: curl -H 'X-API-Key: {key}' http://{listen}/api/tags\n"
            f"          (OpenAI SDKs: api_key=<key>, sent as Authorization: Bearer)\n"
            f"{line}")


def add_parser(sub: Any) -> None:
    init = sub.add_parser("init", help="write a fresh config with a new key")
    init.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
    init.add_argument("--name", default="default", help="name of the first key (default: default)")
    init.set_defaults(func=cmd_init)
    kg = sub.add_parser("keygen", help="make a new key, add it to the config and print it once")
    kg.add_argument("--config", metavar="FILE", help="config file to add the key to")
    kg.add_argument("--name", help="a name for the key (default: key-N)")
    kg.add_argument("--admin", action="store_true",
                    help="the key may also pull, push, create, copy and delete models")
    kg.set_defaults(func=cmd_keygen)


def cmd_init(args: argparse.Namespace) -> int:
    path, _ = find_config(args.config)
    key = generate_key()
    create_config(path, key, args.name)
    print(new_key_banner(key, path, args.name))
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    path, _ = find_config(args.config)
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


def _next_name(path: Path) -> str:
    try:
        names = {k.get("name") for k in tomllib.loads(path.read_text(encoding="utf-8")).get("keys", [])}
    except Exception:
        names = set()
    n = len(names) + 1
    while f"key-{n}" in names:
        n += 1
    return f"key-{n}"
