"""The upstream hosts `doctor` still checks when the config does not load."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from guardproxy.config.model import Upstream, UpstreamHost
from guardproxy.ops.finding import FAIL, INFO
from guardproxy.ops.hostcheck import check_hosts, hosts_in


@pytest.mark.parametrize("upstreams", [5, "http://127.0.0.1:1", True, {"url": "http://127.0.0.1:1"}, None, []])
def test_a_broken_upstreams_value_falls_back_on_upstream(upstreams: Any) -> None:
    (host,) = hosts_in({"upstreams": upstreams, "upstream": "http://127.0.0.1:7"})
    assert host.address.authority == "127.0.0.1:7"


def test_the_readable_entries_of_upstreams_are_kept() -> None:
    hosts = hosts_in({"upstreams": [{"name": "a", "url": "http://127.0.0.1:8"}, 5, {"url": "http://127.0.0.1:9"}]})
    assert [(h.name, h.address.authority) for h in hosts] == [("a", "127.0.0.1:8"), ("upstreams[2]", "127.0.0.1:9")]


def test_a_host_that_does_not_answer_is_asked_once() -> None:
    # A stuck host: it accepts connections (the kernel completes them) and never answers.  Asking it
    # for its models and cloud status as well would make doctor wait out three timeouts instead of one.
    with socket.socket() as stuck:
        stuck.bind(("127.0.0.1", 0))
        stuck.listen(8)
        port = stuck.getsockname()[1]
        upstream = Upstream("127.0.0.1", port)
        findings = check_hosts((UpstreamHost(upstream.authority, upstream),), None, timeout=0.2)
        stuck.setblocking(False)
        connections = 0
        while True:
            try:
                stuck.accept()[0].close()
            except BlockingIOError:
                break
            connections += 1
    assert connections == 1
    assert findings[0].level == FAIL and findings[0].text == f"http://127.0.0.1:{port} did not answer within 0.2s"
    assert [f.level for f in findings[1:]] == [INFO]   # the socket table was not read
