"""The upstream hosts `doctor` still checks when the config does not load."""

from __future__ import annotations

from typing import Any

import pytest

from guardproxy.ops.hostcheck import hosts_in


@pytest.mark.parametrize("upstreams", [5, "http://127.0.0.1:1", True, {"url": "http://127.0.0.1:1"}, None, []])
def test_a_broken_upstreams_value_falls_back_on_upstream(upstreams: Any) -> None:
    (host,) = hosts_in({"upstreams": upstreams, "upstream": "http://127.0.0.1:7"})
    assert host.address.authority == "127.0.0.1:7"


def test_the_readable_entries_of_upstreams_are_kept() -> None:
    hosts = hosts_in({"upstreams": [{"name": "a", "url": "http://127.0.0.1:8"}, 5, {"url": "http://127.0.0.1:9"}]})
    assert [(h.name, h.address.authority) for h in hosts] == [("a", "127.0.0.1:8"), ("upstreams[2]", "127.0.0.1:9")]
