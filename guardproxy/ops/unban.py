"""`guardproxy unban ADDRESS | --all`: lift a ban now, in Redis and in every running gate.

A gate on Redis ([cluster]) hears of it on Redis's unban channel; a gate on this machine
also reads it from the file next to its config, which it looks at every half second
(engine/state/bans.py).  Either way the ban is gone within a second.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

from ..config.load import cluster_address, load_config
from ..config.model import CommandError, Config
from ..config.paths import CONFIG_HELP, env_api_key, required_config
from ..engine.state.bans import bucket_of, lift_in_redis, request_local
from ..engine.state.resp import RedisError
from ..wire.printable import printable
from .redischeck import RedisDown, connect, why


def add_parser(sub: Any) -> None:
    p = sub.add_parser("unban", help="lift a ban (an address, or --all) in Redis and in the running gates",
                       description="Lift the ban of an address (an IPv4 address, an IPv6 address or its /64), or "
                                   "every ban with --all: in Redis with [cluster], and in every running gate within "
                                   "a second.")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("address", nargs="?", metavar="ADDRESS", help="the banned address")
    what.add_argument("--all", action="store_true", help="every ban")
    p.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
    p.set_defaults(func=cmd_unban)


async def _in_redis(config: Config, bucket: str | None) -> int:
    assert config.cluster is not None
    address = cluster_address(config, os.environ)
    client = await connect(address)
    try:
        return await lift_in_redis(client, config.cluster.key_prefix.encode(), bucket)
    except RedisError as e:
        raise RedisDown(why(address, e)) from None
    finally:
        await client.close()


def cmd_unban(args: argparse.Namespace) -> int:
    try:
        bucket = None if args.all else bucket_of(args.address)
    except ValueError as e:
        raise CommandError(f"unban: expected an IPv4 address, an IPv6 address or an IPv6 /64, not "
                           f"{printable(repr(args.address))} ({e})") from None
    path = required_config(args.config)
    config = load_config(path, env_key=env_api_key(os.environ))
    what = "every ban" if bucket is None else f"the ban of {bucket}"
    code = 0
    try:
        written = request_local(path, bucket)
        print(f"asked the gates of {path} on this machine to lift {what} (through {written}); "
              f"they do within a second", file=sys.stderr)
    except OSError as e:
        print(f"guardproxy unban: cannot tell the gates on this machine through "
              f"{path.with_name(path.stem + '.unban')}: {e.strerror or e}", file=sys.stderr)
        code = 1
    if config.cluster is not None:
        try:
            n = asyncio.run(_in_redis(config, bucket))
        except RedisDown as e:
            print(f"guardproxy unban: not lifted in Redis: {printable(str(e))}", file=sys.stderr)
            return 1
        found = (f"{n} ban{'s' if n != 1 else ''} lifted" if bucket is None
                 else "lifted" if n else "it was not banned there")
        print(f"Redis at {cluster_address(config, os.environ).url}: {found}; every gate on it forgets its copy "
              f"within a second", file=sys.stderr)
    return code
