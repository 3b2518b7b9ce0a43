"""Every refusal guardproxy can send has a reason phrase on its status line."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Iterator

import guardproxy
from guardproxy.wire.coding import UnsupportedCoding
from guardproxy.wire.errors import REASONS, GuardError, render


def _subclasses(cls: type[GuardError]) -> Iterator[type[GuardError]]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def test_every_guard_error_status_has_a_reason_phrase() -> None:
    # Errors are defined all over the package (wire, decisions, engine): import every module.
    for module in pkgutil.walk_packages(guardproxy.__path__, "guardproxy."):
        if not module.name.endswith(".__main__"):
            importlib.import_module(module.name)
    errors = [GuardError, *_subclasses(GuardError)]
    assert UnsupportedCoding in errors and len(errors) > 20
    missing = sorted(f"{e.__module__}.{e.__name__} ({e.status})" for e in errors if e.status not in REASONS)
    assert not missing


def test_415_says_what_it_is() -> None:
    assert render(UnsupportedCoding()).startswith(b"HTTP/1.1 415 Unsupported Media Type\r\n")
