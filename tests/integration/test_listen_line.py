"""The start-up line that says where guardproxy listens, as a browser or curl would take the address."""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import replace

import pytest

from conftest import make_config
from guardproxy.app import serve
from guardproxy.config.model import MetricsSettings
from support.polling import until


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6")
async def test_an_ipv6_listen_address_is_written_in_brackets(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="guardproxy")
    config = replace(make_config(9), listen_host="::1", metrics=MetricsSettings(listen=("::1", 0)))
    stop = asyncio.Event()
    served = asyncio.ensure_future(serve(config, stop))
    try:
        said = await until(lambda: [r.getMessage() for r in caplog.records if "without a key on" in r.getMessage()])
    finally:
        stop.set()
        assert await asyncio.wait_for(served, 20) == 0
    listening = [r.getMessage() for r in caplog.records if " listening on " in r.getMessage()]
    assert len(listening) == 1 and " listening on http://[::1]:" in listening[0]
    assert said[0].startswith("metrics without a key on http://[::1]:")
