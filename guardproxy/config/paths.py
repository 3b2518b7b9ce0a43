"""Where the config file is: the one resolver every command uses."""

from __future__ import annotations

import os
from pathlib import Path

from .model import DEFAULT_CONFIG_NAME, ENV_CONFIG

def find_config_path(explicit: str | None) -> tuple[Path, bool]:
    """The config file to use, and whether the user named it explicitly."""
    if explicit:
        return Path(explicit), True
    env = os.environ.get(ENV_CONFIG)
    if env:
        return Path(env), True
    return Path(DEFAULT_CONFIG_NAME), False
