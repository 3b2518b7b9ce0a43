"""`guardproxy top`: a live terminal view of a running gate, from its /metrics.

It scrapes /metrics once per interval (http.client; https with the system's
trust store) and redraws the screen that `topview.render` computes.  On a
terminal it redraws in place with ANSI sequences (no curses, so Windows 10+
consoles work too; where they cannot be enabled it reprints each frame).
When the output is not a terminal it prints one snapshot, from two scrapes
one interval apart so that rates exist, and exits: `guardproxy top | less`
and scripts get text, not escape sequences.
"""

from __future__ import annotations

import argparse
import http.client
import io
import os
import shutil
import signal
import socket
import ssl
import sys
import textwrap
import time
from dataclasses import dataclass
from typing import TextIO

from .. import __version__
from ..config.model import ENV_KEY
from ..config.paths import env_api_key
from .check import Target, connection, parse_target, positive_seconds
from ..wire.printable import printable
from .columns import fit
from .topview import NotMetrics, Snapshot, parse_metrics, render

DEFAULT_URL = "http://127.0.0.1:11435"
METRICS = "/metrics"
MAX_BODY = 16 * 1024 * 1024  # far above any bounded-cardinality scrape; a larger body is not ours

# Home, each line cleared to its end, the rest of the screen cleared: redrawing over the old
# frame instead of clearing first does not flicker.
_HOME, _EOL, _EOS = "\x1b[H", "\x1b[K", "\x1b[J"
_ENTER, _LEAVE = "\x1b[?1049h\x1b[?25l", "\x1b[?25h\x1b[?1049l"  # alternate screen, cursor hidden


class TopError(Exception):
    """A scrape that failed, worded for one line on the screen."""


@dataclass(frozen=True)
class MetricsTarget(Target):
    """The gate whose /metrics is scraped."""

    @property
    def url(self) -> str:
        """The full URL of /metrics, as shown."""
        return self.display + METRICS


def metrics_target(url: str) -> MetricsTarget:
    """guardproxy's address (`host:port`, `http://host:port`, a URL ending in /metrics) as a /metrics target."""
    try:
        gate = parse_target(url)
    except ValueError as e:
        raise TopError(str(e)) from None
    prefix = gate.prefix[:-len(METRICS)] if gate.prefix.endswith(METRICS) else gate.prefix
    return MetricsTarget(gate.scheme, gate.host, gate.port, prefix)


def fetch(target: MetricsTarget, key: str | None, timeout: float = 5.0) -> str:
    """The body of one GET of /metrics, or TopError saying in one line what went wrong."""
    conn = connection(target, timeout)
    headers = {"Accept": "text/plain;version=0.0.4", "User-Agent": f"guardproxy-top/{__version__}"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    try:
        conn.request("GET", target.prefix + METRICS, headers=headers)
        resp = conn.getresponse()
        body = resp.read(MAX_BODY + 1)
    except ssl.SSLCertVerificationError as e:
        raise TopError(f"{target.url}: certificate not trusted ({e.verify_message})") from None
    except ConnectionRefusedError:
        raise TopError(f"cannot connect to {target.host} port {target.port}: connection refused "
                       f"(is guardproxy running there?)") from None
    except socket.gaierror as e:
        raise TopError(f"cannot resolve {target.host}: {e.strerror}") from None
    except TimeoutError:
        raise TopError(f"{target.url}: no answer within {timeout:g}s") from None
    except (OSError, http.client.HTTPException) as e:
        raise TopError(f"{target.url}: {e.strerror if isinstance(e, OSError) and e.strerror else e!r}") from None
    finally:
        conn.close()
    if resp.status in (401, 403):
        why = (f"{ENV_KEY} is not set and --key not given" if not key
               else "the key was not accepted" if resp.status == 401
               else "the key is neither an admin key nor has metrics = true")
        raise TopError(f"{target.url} answered {resp.status} {resp.reason}: {why}")
    if resp.status != 200:
        raise TopError(f"{target.url} answered {resp.status} {resp.reason}")
    if len(body) > MAX_BODY:
        raise TopError(f"{target.url}: the answer is larger than {MAX_BODY // (1024 * 1024)} MiB; not guardproxy's metrics")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise TopError(f"{target.url}: not Prometheus text (not UTF-8)") from None


def scrape(target: MetricsTarget, key: str | None) -> Snapshot:
    at = time.monotonic()  # when the scrape began, as Prometheus stamps its samples
    text = fetch(target, key)
    try:
        return parse_metrics(text, at, target.url)
    except NotMetrics as e:
        raise TopError(f"{target.url}: {e}") from None


def once(target: MetricsTarget, key: str | None, interval: float, out: TextIO, width: int) -> None:
    """One snapshot from two scrapes `interval` apart, so that it has rates."""
    first = scrape(target, key)
    time.sleep(max(0.0, interval - (time.monotonic() - first.at)))
    out.write(render(first, scrape(target, key), width))
    out.flush()


def enable_ansi() -> bool:
    """Whether the terminal takes ANSI sequences; on Windows this switches the console's VT mode on."""
    if sys.platform != "win32":
        return True
    import ctypes
    from ctypes import wintypes
    try:
        kernel32 = ctypes.windll.kernel32
        handle = kernel32.GetStdHandle(-11)  # STD_OUTPUT_HANDLE
        mode = wintypes.DWORD()
        if not kernel32.GetConsoleMode(handle, ctypes.byref(mode)):
            return False
        return bool(kernel32.SetConsoleMode(handle, mode.value | 0x0004))  # ENABLE_VIRTUAL_TERMINAL_PROCESSING
    except (AttributeError, OSError):
        return False


def _frame(text: str, height: int, ansi: bool) -> str:
    lines = text.rstrip("\n").split("\n")
    if ansi:
        # One line short of the height: writing the last line would scroll the screen.
        return _HOME + "".join(line + _EOL + "\n" for line in lines[:max(height - 1, 1)]) + _EOS
    return "\n".join(lines) + "\n\n"


def live(target: MetricsTarget, key: str | None, interval: float, out: TextIO, ansi: bool) -> None:
    """Redraw every `interval` seconds until interrupted; a failed scrape shows its error and is retried."""
    prev: Snapshot | None = None
    if ansi:
        out.write(_ENTER)
    try:
        while True:
            started = time.monotonic()
            size = shutil.get_terminal_size()
            # A line as wide as the terminal leaves the cursor in the wrap position, where some
            # terminals erase the last character on "clear to end of line": keep one column free.
            width = max(size.columns - 1, 1)
            try:
                now = scrape(target, key)
            except TopError as e:
                prev = None
                text = render_error(str(e), interval, width)
            else:
                text = render(prev, now, width, height=size.lines - 1)
                prev = now
            out.write(_frame(text, size.lines, ansi))
            out.flush()
            time.sleep(max(0.0, interval - (time.monotonic() - started)))
    finally:
        if ansi:
            out.write(_LEAVE)
            out.flush()


def render_error(message: str, interval: float, width: int) -> str:
    """A failed scrape, wrapped rather than cut: the end of the message is usually the useful part."""
    paragraphs = [f"guardproxy top: {printable(message)}", f"retrying every {interval:g}s; Ctrl-C to quit"]
    return "\n\n".join("\n".join(fit(line, width) for line in textwrap.wrap(p, max(width, 1)))
                       for p in paragraphs) + "\n"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("top", help="a live view of a running gate: streams, tokens/s, requests/s, queue, upstreams",
                       description="A live view of a running gate from its /metrics, redrawn each second. "
                                   "When the output is not a terminal it prints one snapshot and exits.")
    p.add_argument("url", nargs="?", default=DEFAULT_URL, metavar="URL",
                   help=f"guardproxy's address; /metrics is added (default {DEFAULT_URL})")
    p.add_argument("--key", help=f"an admin key or one with metrics = true (default: ${ENV_KEY})")
    p.add_argument("--interval", type=positive_seconds, default=1.0, metavar="SECONDS",
                   help="seconds between scrapes (default 1)")
    p.add_argument("--once", action="store_true",
                   help="print one snapshot and exit (the default when the output is not a terminal)")
    p.set_defaults(func=cmd_top)


def quit_on_interrupt() -> None:
    """Ctrl-C (SIGINT) ends `top`, however it was started.

    A process started with SIGINT ignored (a background job of a script, `nohup`-like
    launchers, some CI runners and test harnesses) inherits the ignore, and Python then
    keeps it instead of installing its KeyboardInterrupt handler: the live view would
    never quit on Ctrl-C.  So the handler is installed explicitly."""
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    except (ValueError, OSError):
        pass  # not the main thread, or no such signal here: nothing to change


def cmd_top(args: argparse.Namespace) -> int:
    quit_on_interrupt()
    if isinstance(sys.stdout, io.TextIOWrapper):  # a key or model name the console's code page lacks
        sys.stdout.reconfigure(errors="replace")
    key = args.key or env_api_key(os.environ)
    try:
        target = metrics_target(args.url)
        if args.once or not sys.stdout.isatty():
            width = shutil.get_terminal_size((100, 24)).columns
            once(target, key, args.interval, sys.stdout, width)
        else:
            live(target, key, args.interval, sys.stdout, enable_ansi())
    except TopError as e:
        print(f"guardproxy top: {printable(str(e))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # `guardproxy top | head -3`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 0
