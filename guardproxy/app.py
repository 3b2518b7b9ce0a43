"""Running the proxy: the config `run` uses, and serving it until told to stop.

`guardproxy run` (cli.py) and the Windows service host (ops/winservice/host.py)
both come here, so a config is found, completed and served the same way
whichever of them started the process.
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import sys
from typing import Mapping

from . import __version__
from .config.load import load_config, parse_config
from .config.model import Config, ConfigError, url_host
from .config.overrides import Overrides
from .config.paths import env_api_key, existing_config, find_config
from .config.values import is_loopback_host
from .config.write import create_config, generate_key
from .engine import logs
from .engine.loop import loop_name, run as run_loop
from .ops.keys import new_key_banner

EXIT_CONFIG = 2
log = logs.log


def resolve_config(config: str | None = None, *, listen: str | None = None, upstream: str | None = None,
                   environ: Mapping[str, str] | None = None) -> Config:
    """The config `run` uses, creating ./guardproxy.toml (and printing its new key) on the very first run.

    `config` is --config; `listen` and `upstream` override the file's values.
    """
    environ = os.environ if environ is None else environ
    env_key = env_api_key(environ)
    path = existing_config(config, environ)
    if path is not None:
        resolved = load_config(path, env_key=env_key)
    elif env_key:
        resolved = parse_config({}, None, env_key=env_key)
    else:
        path = find_config(config, environ).path   # where the first run creates it
        key = generate_key()
        create_config(path, key)
        print(new_key_banner(key, path, "default"), file=sys.stderr)
        resolved = load_config(path)
    return Overrides(listen, upstream).apply(resolved)


def warnings(config: Config) -> list[str]:
    """Risky settings, said once at start-up."""
    out = [f"key \"{k.name}\" is stored in plaintext in {config.path}; replace it with key_sha256"
           for k in config.keys if k.plaintext]
    if "*" in config.cors.origins:
        out.append("cors.origins allows \"*\": any web page can call this server with a key it holds; "
                   "list your app's exact origins instead")
    if config.metrics.listen is not None and not is_loopback_host(config.metrics.listen[0]):
        out.append("metrics.listen = \"{}:{}\" is not a loopback address: whoever reaches it reads the "
                   "metrics (key names, models, traffic) without a key".format(*config.metrics.listen))
    reserve = config.budgets.reserve
    for k in config.keys:
        cap = k.max_output_tokens
        if k.tokens is not None and k.tokens.tokens < (reserve if cap is None else cap):
            out.append(f"key \"{k.name}\": its token budget ({k.tokens}) is smaller than what a generation without "
                       f"an output cap reserves ({reserve if cap is None else cap}): such generations are all "
                       f"refused; set [budgets] reserve lower, or have clients send a cap")
    return out


def run(config: Config, loop: str = "auto", overrides: Overrides = Overrides()) -> int:
    """`guardproxy run` in the foreground: warn about risky settings, then serve until SIGINT/SIGTERM.

    `overrides`: what the command line set, kept over the file's values on every reload."""
    try:
        return run_loop(serve(config, overrides=overrides), loop)
    except RuntimeError as e:
        log.error("%s", e)
        return 1
    except KeyboardInterrupt:
        return 0


def _set_from_thread(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    try:
        loop.call_soon_threadsafe(stop.set)
    except RuntimeError:
        pass  # the loop has closed: the server has stopped already


async def serve(config: Config, stop: asyncio.Event | None = None, overrides: Overrides = Overrides()) -> int:
    """Serve until SIGINT/SIGTERM, or until `stop` is set (the Windows service sets it)."""
    from .engine.accesslog import AccessLog, access_log_problem, reopen_on_signals
    from .engine.server import GuardServer, ListenError
    logs.apply_level(config.log_level)
    for warning in warnings(config):
        log.warning("%s", warning)
    problem = access_log_problem(config.access_log)  # the words `doctor` uses too
    if problem is not None:
        log.error("config error: %s: log.access: %s", config.path, problem)
        return EXIT_CONFIG
    try:
        access_log = AccessLog(config.access_log)
    except OSError as e:
        log.error("config error: %s: log.access: cannot open %r: %s", config.path, config.access_log, e.strerror)
        return EXIT_CONFIG
    from .engine.fdlimit import check_open_files
    too_few = check_open_files(config.server.max_connections)
    if too_few:
        log.warning("%s", too_few)
    from .engine.allocator import keep_freed_memory
    keep_freed_memory()
    server = GuardServer(config, access_log=access_log)
    try:
        await server.start()
    except ListenError as e:
        log.error("%s", e.strerror)
        return 1
    except OSError as e:
        if e.errno in (errno.EADDRINUSE, getattr(errno, "WSAEADDRINUSE", -1)) or getattr(e, "winerror", 0) == 10048:
            from .ops.hostcheck import address_in_use
            log.error("%s", await asyncio.to_thread(address_in_use, config.listen_host, config.listen_port))
        else:
            log.error("cannot listen on %s:%s: %s", url_host(config.listen_host), config.listen_port, e.strerror or e)
        return 1
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM) if stop is None else ()
    stop = asyncio.Event() if stop is None else stop
    for sig in signals:
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, AttributeError, RuntimeError):
            pass  # Windows: Ctrl+C arrives as KeyboardInterrupt / cancellation
    if signals and sys.platform == "win32":
        # Ctrl+Break, and the console control event another Windows program can send to a
        # process group (Ctrl+C cannot be sent to one): the same graceful stop.
        signal.signal(signal.SIGBREAK, lambda _sig, _frame: loop.call_soon_threadsafe(stop.set))
    from .engine.parent import watch_parent
    watch_parent(lambda: _set_from_thread(loop, stop))  # the one-file exe's first process (PyInstaller #4858)
    watch: asyncio.Task[None] | None = None
    # SIGHUP and SIGUSR1 reopen the access log (log rotation); SIGHUP then reloads the config.
    if config.path is not None:
        from .engine.reload import Reloader
        reloader = Reloader(server, config.path, env_key=env_api_key(os.environ), overrides=overrides)
        reloader.install_sighup(loop, before=access_log.reopen)
        reopen_on_signals(loop, access_log, ("SIGUSR1",))
        watch = loop.create_task(reloader.watch())
    else:
        reopen_on_signals(loop, access_log)
    hosts = ", ".join(f"http://{h.address.authority}" for h in config.hosts())
    log.info("version %s listening on %s://%s:%s -> %s (%s, %d key%s)", __version__, server.scheme.decode(),
             url_host(config.listen_host), server.port, hosts, loop_name(loop), len(config.keys),
             "s" if len(config.keys) != 1 else "")
    if config.metrics.listen is not None and server.metrics_listener is not None:
        log.info("metrics without a key on http://%s:%d/metrics", url_host(config.metrics.listen[0]),
                 server.metrics_listener.port)
    try:
        await stop.wait()
    except asyncio.CancelledError:
        pass
    if watch is not None:
        watch.cancel()
    log.info("shutting down (grace %gs)", config.timeouts.grace)
    await server.stop()
    access_log.close()
    return 0
