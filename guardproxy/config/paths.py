"""Where the config file is: the one resolver that run, init, keys, usage, doctor and the Windows service use.

The rules, in order: --config; else $GUARDPROXY_CONFIG; else the first of
./guardproxy.toml and (on Windows) %ProgramData%\\guardproxy\\guardproxy.toml
that exists; else ./guardproxy.toml, where `run` and `init` create one.  A
service never looks in the current directory: it runs in C:\\Windows\\System32.

Pure given `environ` and `windows`, so the Windows rules are tested anywhere.
"""

from __future__ import annotations

import ntpath
import os
import sys
from pathlib import Path
from typing import Mapping, NamedTuple

from .model import DEFAULT_CONFIG_NAME, ENV_CONFIG, ENV_KEY, ConfigError

# For argparse, which expands %-formats in help texts.
CONFIG_HELP = (f"config file (default: ${ENV_CONFIG} or ./{DEFAULT_CONFIG_NAME}; "
               f"on Windows also %%ProgramData%%\\guardproxy\\{DEFAULT_CONFIG_NAME})")


class ConfigLocation(NamedTuple):
    path: Path
    named: bool  # by --config or $GUARDPROXY_CONFIG: it must exist, nothing else is tried


def programdata_dir(environ: Mapping[str, str]) -> str:
    """%ProgramData%\\guardproxy: machine-wide, writable by administrators and services."""
    base = environ.get("ProgramData") or environ.get("PROGRAMDATA") or r"C:\ProgramData"
    return ntpath.join(base, "guardproxy")


def config_candidates(explicit: str | None, environ: Mapping[str, str], windows: bool,
                      *, service: bool = False) -> list[str]:
    """Config files to try, in order.  An explicit choice (--config, $GUARDPROXY_CONFIG) is the only one."""
    if explicit:
        return [explicit]
    if environ.get(ENV_CONFIG):
        return [environ[ENV_CONFIG]]
    out = [] if service else [DEFAULT_CONFIG_NAME]
    if windows or service:
        out.append(ntpath.join(programdata_dir(environ), DEFAULT_CONFIG_NAME))
    return out


def find_config(explicit: str | None, environ: Mapping[str, str] | None = None,
                windows: bool | None = None) -> ConfigLocation:
    """The config file to use (or to create, when none exists yet), and whether the user named it."""
    environ = os.environ if environ is None else environ
    windows = sys.platform == "win32" if windows is None else windows
    candidates = config_candidates(explicit, environ, windows)
    named = bool(explicit or environ.get(ENV_CONFIG))
    if not named:
        for candidate in candidates:
            if Path(candidate).exists():
                return ConfigLocation(Path(candidate), False)
    return ConfigLocation(Path(candidates[0]), named)


def existing_config(explicit: str | None, environ: Mapping[str, str] | None = None,
                    windows: bool | None = None) -> Path | None:
    """The config file to read; None when there is none where one is looked for.

    A file named by --config or $GUARDPROXY_CONFIG must exist: ConfigError (no such file) when it does not.
    """
    path, named = find_config(explicit, environ, windows)
    if path.exists():
        return path
    if named:
        raise no_such_config(path)
    return None


def required_config(explicit: str | None, environ: Mapping[str, str] | None = None,
                    windows: bool | None = None) -> Path:
    """The config file a command cannot do without (the key commands): ConfigError when there is none."""
    path = existing_config(explicit, environ, windows)
    if path is None:
        raise no_such_config(find_config(explicit, environ, windows).path)
    return path


def no_such_config(path: Path) -> ConfigError:
    return ConfigError(f"{path}: cannot read: no such file "
                       f"(create it with `python -m guardproxy init --config {path}`)")


def env_api_key(environ: Mapping[str, str]) -> str | None:
    """The key $GUARDPROXY_API_KEY adds to the config's (an empty value is no key)."""
    return environ.get(ENV_KEY) or None


def service_config_path(explicit: str | None, environ: Mapping[str, str]) -> str:
    """The config a service uses: --config, else $GUARDPROXY_CONFIG, else %ProgramData%\\guardproxy\\guardproxy.toml."""
    return config_candidates(explicit, environ, windows=True, service=True)[0]
