"""Reading the OS's table of listening sockets: /proc/net/tcp* and `netstat -ano`, from literal text."""

from __future__ import annotations

import socket
import sys

import pytest

from guardproxy.ops import listening
from guardproxy.ops.listening import Listener, exposed, parse_netstat, parse_proc_net_tcp

PROC_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:2CAA 00000000:0000 0A 00000000:00000000 00:00000000 00000000   997        0 44091 1 00000000cf562cf1 100 0 0 10 0
   1: 00000000:2CAB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1659 1 00000000c29c00a2 100 0 0 10 0
   2: 0501A8C0:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1660 1 00000000c29c00a2 100 0 0 10 0
   3: 0100007F:2CAA 0100007F:D431 01 00000000:00000000 00:00000000 00000000   997        0 50001 1 00000000e553dd4a 20 4 30 10 -1
"""

PROC_TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:2CAA 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000   997        0 1 1 0 100 0 0 10 0
   1: 00000000000000000000000001000000:2CAB 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0 100 0 0 10 0
   2: 0000000000000000FFFF00000100007F:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3 1 0 100 0 0 10 0
   3: 000080FE00000000FF0A0D02030B0C0D:1F90 00000000000000000000000000000000:0000 06 00000000:00000000 00:00000000 00000000     0        0 0 1 0 100 0 0 10 0
"""

NETSTAT = """\

Active Connections

  Proto  Local Address          Foreign Address        State           PID
  TCP    0.0.0.0:135            0.0.0.0:0              LISTENING       1052
  TCP    0.0.0.0:11434          0.0.0.0:0              ABH\u00d6REN         8812
  TCP    127.0.0.1:11435        0.0.0.0:0              LISTENING       4410
  TCP    127.0.0.1:11435        127.0.0.1:51234        ESTABLISHED     4410
  TCP    192.168.1.20:139       0.0.0.0:0              LISTENING       4
  TCP    [::]:11434             [::]:0                 LISTENING       8812
  TCP    [::1]:11436            [::]:0                 LISTENING       9000
  TCP    [fe80::1c2b:3d4e:5f60:7182%12]:5357  [::]:0   LISTENING       4
  UDP    0.0.0.0:5353           *:*                                    2200
"""


def test_proc_net_tcp_finds_listeners_in_host_byte_order() -> None:
    assert parse_proc_net_tcp(PROC_TCP, "little") == [
        Listener("127.0.0.1", 11434), Listener("0.0.0.0", 11435), Listener("192.168.1.5", 22)]


def test_proc_net_tcp_on_a_big_endian_host() -> None:
    text = PROC_TCP.splitlines()[0] + "\n   0: 7F000001:2CAA 00000000:0000 0A 0:0 00:0 0 0 0 1\n"
    assert parse_proc_net_tcp(text, "big") == [Listener("127.0.0.1", 11434)]


def test_proc_net_tcp6_wildcard_loopback_and_mapped_v4() -> None:
    # The fourth row is TIME_WAIT (06), not a listener.
    assert parse_proc_net_tcp(PROC_TCP6, "little") == [
        Listener("::", 11434), Listener("::1", 11435), Listener("127.0.0.1", 80)]


def test_proc_net_tcp_ignores_garbage_rows() -> None:
    text = "header\n   0: zz:1 00000000:0000 0A\n   1: 0100007F 0A\n\n   2: 0100:0016 0 0A\n"
    assert parse_proc_net_tcp(text, "little") == []


def test_netstat_listeners_whatever_the_language_of_the_state_column() -> None:
    assert parse_netstat(NETSTAT) == [
        Listener("0.0.0.0", 135), Listener("0.0.0.0", 11434), Listener("127.0.0.1", 11435),
        Listener("192.168.1.20", 139), Listener("::", 11434), Listener("::1", 11436),
        Listener("fe80::1c2b:3d4e:5f60:7182", 5357)]


def test_exposed_means_listening_on_the_port_on_a_non_loopback_address() -> None:
    table = parse_netstat(NETSTAT)
    assert exposed(11434, table) == [Listener("0.0.0.0", 11434), Listener("::", 11434)]
    assert exposed(11435, table) == []
    assert exposed(11436, table) == []
    assert exposed(139, table) == [Listener("192.168.1.20", 139)]
    assert Listener("::", 1).display == "[::]:1" and Listener("0.0.0.0", 1).display == "0.0.0.0:1"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/net/tcp")
def test_the_live_table_shows_sockets_this_test_opened() -> None:
    # Binding and listening sends nothing on the network.
    loop4 = socket.create_server(("127.0.0.1", 0))
    wild4 = socket.create_server(("0.0.0.0", 0))
    try:
        table = listening.listeners()
        assert table is not None
        assert Listener("127.0.0.1", loop4.getsockname()[1]) in table
        assert Listener("0.0.0.0", wild4.getsockname()[1]) in table
        assert exposed(loop4.getsockname()[1], table) == []
        assert exposed(wild4.getsockname()[1], table) == [Listener("0.0.0.0", wild4.getsockname()[1])]
    finally:
        loop4.close()
        wild4.close()
