"""docs/configuration.md is what guardproxy/config/reference.py writes from the code, and covers every field."""

from __future__ import annotations

import dataclasses

import pytest

from guardproxy.config import load, reference


def test_the_reference_on_disk_is_the_generated_one() -> None:
    on_disk = reference.DOC.read_text(encoding="utf-8")
    assert on_disk == reference.render(), "docs/configuration.md is stale: run `make docs`"


def test_every_field_the_loader_accepts_has_a_row() -> None:
    text = reference.render()
    for table in reference.tables():
        section = text[text.index(f"## {table.heading}\n"):]
        section = section[:section.find("\n## ", 1) if "\n## " in section[1:] else len(section)]
        for name in table.fields:
            assert f"| `{name}` |" in section, (table.heading, name)
    tables = {t.heading.strip("[]") for t in reference.tables()}
    assert {name for name in load._TOP if reference._is_table(name)} <= tables


def test_a_field_without_a_meaning_is_refused() -> None:
    comments = reference.field_comments("class A:\n    x: int = 1  # what x is\n    # y: above\n    y: int = 2\n"
                                        "    z: int = 3\n")
    assert comments[("A", "x")] == "what x is" and comments[("A", "y")] == "y: above" and comments[("A", "z")] == ""


@pytest.mark.parametrize("seconds,text", [(0.05, "50ms"), (10.0, "10s"), (90.0, "90s"), (600.0, "10min"),
                                          (3600.0, "1h"), (1.5, "1500ms")])
def test_durations_are_written_as_a_person_would(seconds: float, text: str) -> None:
    assert reference._duration(seconds) == text


def test_defaults_come_from_the_dataclasses() -> None:
    text = reference.render()
    from guardproxy.config.model import Timeouts
    connect = next(f for f in dataclasses.fields(Timeouts) if f.name == "connect")
    assert f"| `connect` | duration | `\"{reference._duration(connect.default)}\"` |" in text  # type: ignore[arg-type]
