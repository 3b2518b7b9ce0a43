"""Which backend keeps the limits: in process, or Redis when the config has [cluster]."""

from __future__ import annotations

import os
import sys
from typing import Mapping, TextIO

from ...config.load import cluster_address
from ...config.model import Config
from ...decisions.policy import Policies
from .base import State
from .cluster import RedisState
from .local import LocalState


def open_state(config: Config, policies: Policies, *, log: TextIO = sys.stderr,
               environ: Mapping[str, str] = os.environ) -> State:
    if config.cluster is None:
        return LocalState(config, policies, log=log, environ=environ)
    return RedisState(config, policies, cluster_address(config, environ), log=log)
