"""The route table people read (README.md, docs/security.md) names every route of the code's table."""

from __future__ import annotations

import re
from pathlib import Path

from guardproxy.decisions.routes import ROUTES

ROOT = Path(__file__).resolve().parents[2]
HEADER = "| route | who may | model in | slot, token counts |"


def table(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    start = text.index(HEADER)
    return text[start:text.index("\n\n", start)].splitlines()[2:]


def test_readme_and_the_security_page_show_the_same_table() -> None:
    readme = [re.sub(r"\]\(docs/security\.md#", "](#", row) for row in table(ROOT / "README.md")]
    assert readme == table(ROOT / "docs" / "security.md")


def test_every_route_of_the_code_is_in_the_table() -> None:
    rows = "\n".join(row.split(" | ")[0] for row in table(ROOT / "README.md"))
    for route in ROUTES:
        path = route.path.decode().rstrip("/") or "/"
        # A path parameter is written {name}; the last literal segment is what the table must name.
        shown = path if not route.param else path.rsplit("/", 1)[-1] or path
        assert shown in rows or path.rsplit("/", 1)[-1] in rows, route.name
