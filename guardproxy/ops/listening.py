"""Which addresses a TCP port is listening on, read from the operating system's socket table.

Used by `guardproxy doctor` to find an Ollama reachable from the LAN (bound
to 0.0.0.0 or ::).  It reads the table (/proc/net/tcp and /proc/net/tcp6 on
Linux, `netstat -ano` on Windows) and never sends a packet anywhere: probing
the machine's own LAN or public address would be traffic on the network.
The parsers are pure functions over the text, tested with literal tables.
"""

from __future__ import annotations

import ipaddress
import re
import struct
import subprocess
import sys
from dataclasses import dataclass

from ..config.model import url_host

_TCP_LISTEN = "0A"  # include/net/tcp_states.h: TCP_LISTEN = 10


@dataclass(frozen=True)
class Listener:
    address: str   # "0.0.0.0", "::", "127.0.0.1", "192.168.1.5", ...
    port: int

    @property
    def loopback_only(self) -> bool:
        return ipaddress.ip_address(self.address).is_loopback

    @property
    def display(self) -> str:
        return f"{url_host(self.address)}:{self.port}"


def _kernel_words(hexstr: str, byteorder: str) -> bytes:
    """/proc prints an address as 32-bit words in the host's byte order; undo that."""
    fmt = "<I" if byteorder == "little" else ">I"
    return b"".join(struct.pack(fmt, int(hexstr[i:i + 8], 16)) for i in range(0, len(hexstr), 8))


def parse_proc_net_tcp(text: str, byteorder: str = sys.byteorder) -> list[Listener]:
    """LISTEN sockets in the text of /proc/net/tcp or /proc/net/tcp6."""
    out: list[Listener] = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 4 or fields[3] != _TCP_LISTEN or ":" not in fields[1]:
            continue
        addr_hex, port_hex = fields[1].split(":", 1)
        if len(addr_hex) not in (8, 32):
            continue
        try:
            ip = ipaddress.ip_address(_kernel_words(addr_hex, byteorder))
            port = int(port_hex, 16)
        except ValueError:
            continue
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        out.append(Listener(str(ip), port))
    return out


_NETSTAT_ROW = re.compile(r"^\s*TCP\s+(\S+):(\d+)\s+(\S+):(\d+)\s+\S+", re.IGNORECASE)


def parse_netstat(text: str) -> list[Listener]:
    """LISTEN sockets in Windows' `netstat -ano` output.

    The state column is translated ("LISTENING", "ABHÖREN", ...), so a
    listener is recognised by its foreign address 0.0.0.0:0 or [::]:0.
    """
    out: list[Listener] = []
    for line in text.splitlines():
        m = _NETSTAT_ROW.match(line)
        if not m or m.group(4) != "0" or m.group(3) not in ("0.0.0.0", "[::]", "*"):
            continue
        addr = m.group(1).strip("[]").split("%", 1)[0]  # drop an IPv6 zone such as %12
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            continue
        out.append(Listener(str(ip), int(m.group(2))))
    return out


def listeners() -> list[Listener] | None:
    """The machine's listening TCP sockets, or None where this platform's table is not read."""
    if sys.platform.startswith("linux"):
        found: list[Listener] = []
        for path in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                with open(path, encoding="ascii", errors="replace") as f:
                    found += parse_proc_net_tcp(f.read())
            except OSError:
                continue  # no IPv6 in this kernel, say
        return found
    if sys.platform == "win32":
        try:
            proc = subprocess.run(["netstat", "-ano", "-p", "TCP"], capture_output=True, text=True,
                                  errors="replace", timeout=20)
            proc6 = subprocess.run(["netstat", "-ano", "-p", "TCPv6"], capture_output=True, text=True,
                                   errors="replace", timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return parse_netstat(proc.stdout + "\n" + proc6.stdout)
    return None


def exposed(port: int, table: list[Listener]) -> list[Listener]:
    """Sockets listening on `port` on an address other machines can reach (not loopback)."""
    return [entry for entry in table if entry.port == port and not entry.loopback_only]
