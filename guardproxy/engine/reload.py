"""Live config changes: on SIGHUP (where it exists) and when the file changes on disk.

A reload parses the whole file first; a broken edit is refused with one
warning and the running config stays.  Only the settings a running server can
take are applied (keys, CORS, limits, bans, timeouts for new requests, the
upstream hosts); the others (server.RESTART_ONLY) are kept, and named in the
log line; running streams are never touched.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Callable

from ..config.load import load_config
from ..config.model import ConfigError
from ..config.overrides import Overrides
from . import logs
from .server import RESTART_ONLY, GuardServer
from .state.bans import UnbanWatch

POLL_INTERVAL = 0.5  # a revoked key is refused within a second of the save


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class Reloader:
    def __init__(self, server: GuardServer, path: Path, *, env_key: str | None = None,
                 overrides: Overrides = Overrides()) -> None:
        self.server = server
        self.overrides = overrides  # what the command line set stays set
        self.unbans = UnbanWatch(path)  # `guardproxy unban` on this machine
        self.path = path
        self.env_key = env_key
        self._seen = _signature(path)
        self.reloads = 0
        self.refused = 0

    def reload(self, why: str = "reload") -> bool:
        """Load and apply the file now; False (and one log line) if it is broken."""
        self._seen = _signature(self.path)
        try:
            config = self.overrides.apply(load_config(self.path, env_key=self.env_key))
        except ConfigError as e:
            self.refused += 1
            logs.log.warning("%s: config not reloaded, the previous one keeps running: %s", why, e)
            return False
        old = self.server.config
        notes = list(dict.fromkeys(name for field, name in RESTART_ONLY
                                   if getattr(config, field) != getattr(old, field)))
        self.server.apply_config(config)
        logs.apply_level(config.log_level)
        self.reloads += 1
        extra = f" ({', '.join(notes)} changes need a restart)" if notes else ""
        logs.log.info("%s: config reloaded from %s: %d key%s%s", why, self.path, len(config.keys),
                      "s" if len(config.keys) != 1 else "", extra)
        return True

    def lift_bans(self) -> None:
        """Forget the bans `guardproxy unban` asked to lift since the last look (each said in one line)."""
        for bucket in self.unbans.read():
            had = self.server.state.forget_ban(bucket)
            what = "every ban" if bucket is None else f"the ban of {bucket}"
            logs.log.info("unban: %s lifted%s", what, "" if had or bucket is None else " (none was known here)")

    def changed(self) -> bool:
        sig = _signature(self.path)
        return sig is not None and sig != self._seen

    async def watch(self, interval: float = POLL_INTERVAL) -> None:
        """Poll the file's mtime/size/inode (works everywhere, including Windows)."""
        while True:
            await asyncio.sleep(interval)
            self.lift_bans()
            if self.changed():
                # An editor may still be writing: wait one more interval for the
                # size to settle before reading.
                before = _signature(self.path)
                await asyncio.sleep(min(interval, 0.2))
                if _signature(self.path) == before:
                    self.reload("file changed")

    def install_sighup(self, loop: asyncio.AbstractEventLoop, before: Callable[[], object] | None = None) -> bool:
        """SIGHUP reloads the config, after `before` (the access log's reopen, for log rotation)."""
        sighup = getattr(signal, "SIGHUP", None)
        if sighup is None:
            return False
        try:
            loop.add_signal_handler(sighup, self._on_sighup, before)
        except (NotImplementedError, RuntimeError):
            return False
        return True

    def _on_sighup(self, before: Callable[[], object] | None) -> None:
        if before is not None:
            before()
        self.reload("SIGHUP")
