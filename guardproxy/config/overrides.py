"""What the command line sets over the file (`run --listen`, `--upstream`): applied at start and on every reload.

A reload reads the file again; without these the file's values (or the defaults) would
quietly replace what the operator asked for on the command line.  (`--log-level` is
kept by engine/logs.py, which pins the level.)
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .model import CommandError, Config
from .values import parse_hostport, parse_upstream


@dataclass(frozen=True)
class Overrides:
    listen: str | None = None    # --listen HOST:PORT
    upstream: str | None = None  # --upstream URL: this one host, whatever [[upstreams]] the file lists

    def apply(self, config: Config) -> Config:
        """`config` with the command line's values in place of the file's (ConfigError naming the option)."""
        if self.listen:
            try:
                host, port = parse_hostport(self.listen)
            except ValueError as e:
                raise CommandError(f"--listen: expected {e}") from None
            config = replace(config, listen_host=host, listen_port=port)
        if self.upstream:
            try:
                config = replace(config, upstream=parse_upstream(self.upstream), upstreams=())
            except ValueError as e:
                raise CommandError(f"--upstream: expected {e}") from None
        return config
