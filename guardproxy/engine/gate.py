"""What an exchange reads from the server that runs it: the server's state, not the server."""

from __future__ import annotations

from typing import Callable, Protocol

from ..config.model import Config
from ..decisions.auth import KeyRing
from ..decisions.policy import Policies
from .accesslog import AccessLog
from .hosts import HostSet
from .metrics import Metrics
from .state.base import State


class Gate(Protocol):
    """What an exchange reads from the server that runs it (the server's state, not the server)."""

    config: Config
    keys: KeyRing
    policies: Policies
    state: State
    hosts: HostSet
    access_log: AccessLog
    metrics: Metrics
    clock: Callable[[], float]
    closing: bool

    @property
    def scheme(self) -> bytes: ...
    async def scrape(self) -> bytes: ...
