"""The service host: the only code that needs pywin32 and Windows.

A program registered with `sc.exe create` must answer the Service Control
Manager (SCM) or Windows kills it after 30 s with error 1053.  So the
registered command is `guardproxy.exe service run --config FILE --name NAME`,
which hands control to the SCM through pywin32's servicemanager and serves
with app.serve until the SCM says stop; running streams then get the grace
period.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from typing import Any

from ... import app
from ...config.model import Config, ConfigError, Timeouts
from ...engine import logs
from ...engine.loop import run as run_loop
from .logfile import HandlerStream, rotating, service_log_paths
from .sc import DISPLAY_NAME

STOP_EXTRA_S = 10.0                  # on top of the grace period, for closing and flushing


def host_service(config_path: str, name: str) -> int:
    """`guardproxy service run`: hand this process to the SCM, which then calls the service class."""
    try:
        import servicemanager
    except ImportError:
        print("guardproxy service run: pywin32 is missing (`pip install pywin32`)", file=sys.stderr)
        return 1
    servicemanager.Initialize()
    servicemanager.PrepareToHostSingle(service_class(config_path, name))
    try:
        servicemanager.StartServiceCtrlDispatcher()
    except Exception as e:  # error 1063: started by hand rather than by the SCM
        print(f"guardproxy service run: only the Service Control Manager starts this ({e}); "
              f"use `guardproxy service start` or `guardproxy run`", file=sys.stderr)
        return 1
    return 0


def service_class(config_path: str, name: str) -> type:
    """The class pywin32 instantiates when the SCM starts the service named `name`."""
    # Imported here: pywin32 exists only on Windows, and tests put stand-ins in sys.modules.
    import servicemanager
    import win32service
    import win32serviceutil

    # pywin32 ships no type information, so ServiceFramework is Any to the type checker.
    class GuardService(win32serviceutil.ServiceFramework):  # type: ignore[misc]
        _svc_name_ = name
        _svc_display_name_ = DISPLAY_NAME

        def __init__(self, args: Any) -> None:
            super().__init__(args)
            self._lock = threading.Lock()
            self._loop: asyncio.AbstractEventLoop | None = None
            self._stop: asyncio.Event | None = None
            self._stop_requested = False
            self._grace = Timeouts.grace  # until the config is read

        def SvcDoRun(self) -> None:
            log_path, access_path = service_log_paths(config_path)
            # A service starts in C:\Windows\System32: relative paths in the config
            # (log files, TLS files) mean "next to the config" instead.
            os.chdir(os.path.dirname(config_path) or ".")
            messages = rotating(log_path, stamp=True)
            logs.setup("info", messages)  # the config's [log] level once it is read
            streams = sys.stdout, sys.stderr
            sys.stderr = HandlerStream(messages)  # anything printed by hand, Python's own warnings
            sys.stdout = HandlerStream(rotating(access_path, stamp=False))  # log.access = "-" lands here
            try:
                config = app.resolve_config(config_path)
                self._grace = config.timeouts.grace
                rc = run_loop(self._main(config), "asyncio")
            except ConfigError as e:
                logs.log.error("config error: %s", e)
                servicemanager.LogErrorMsg(f"guardproxy: config error: {e}")
                rc = app.EXIT_CONFIG
            except Exception as e:
                # It stops the service, and the log is the only place anyone will look: with its traceback.
                logs.log.error("stopped by an unexpected error: %r", e, exc_info=True)
                servicemanager.LogErrorMsg(f"guardproxy stopped: {e!r}; see {log_path}")
                rc = 1
            logs.log.info("service stopped (exit %d)", rc)
            sys.stdout.close()
            sys.stderr.close()
            sys.stdout, sys.stderr = streams
            logs.reset()
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
