"""The configuration reference, docs/configuration.md, generated from model.py and the loader.

What a field *is* lives in one place: the loader's field sets say which names a table accepts, the
dataclasses of model.py give each its default, and the comment beside the field in model.py says
what it means.  This module joins the three, so the reference cannot drift from the code:
tests/unit/config/test_reference.py fails when docs/configuration.md differs from what it writes.

    python -m guardproxy.config.reference --write   # regenerate docs/configuration.md
"""

from __future__ import annotations

import ast
import dataclasses
import io
import sys
import tokenize
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

from . import load, model

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


@dataclass(frozen=True)
class Table:
    """One TOML table (or the top level) as the loader reads it."""
    heading: str                      # "[timeouts]", "[[keys]]", "top level"
    fields: frozenset[str]            # the names the loader accepts
    owner: type                       # the dataclass whose fields hold them
    renames: dict[str, str] = dataclasses.field(default_factory=dict)  # TOML name -> attribute
    intro: str = ""


# The few places where a TOML name is not its attribute's name, or the default is a module constant.
_TOP_DEFAULTS = {"listen_host": model.DEFAULT_LISTEN, "upstream": model.DEFAULT_UPSTREAM,
                 "access_log": model.DEFAULT_ACCESS_LOG}
_SIZES = {"max_body", "max_blob"}           # int fields read as sizes ("64MiB")
_NUMBERS = {"weight"}                       # float fields that are plain numbers, not durations


def tables() -> list[Table]:
    tops = frozenset(load._TOP) - {"keys", "upstreams"} - {name for name in load._TOP if _is_table(name)}
    return [
        Table("top level", tops, model.Config, {"listen": "listen_host"},
              "Keys at the top of the file, before any table."),
        Table("[[keys]]", frozenset(load._KEY_FIELDS), model.KeyEntry,
              {"key_sha256": "sha256", "key": "plaintext", "previous_key_sha256": "previous_sha256"},
              "One block per key. Exactly one of `key_sha256` and `key`."),
        Table("[[upstreams]]", frozenset(load._UPSTREAM_FIELDS), model.UpstreamHost, {"url": "address"},
              "Several Ollama hosts instead of the one `upstream` (see [hosts-and-redis.md](hosts-and-redis.md))."),
        Table("[routing]", frozenset(load._ROUTING_FIELDS), model.Routing),
        Table("[log]", frozenset(load._LOG_FIELDS), model.Config, {"access": "access_log", "level": "log_level"}),
        Table("[timeouts]", frozenset(load._TIMEOUT_FIELDS), model.Timeouts, {},
              "Durations: a number of seconds or a string like \"250ms\", \"30s\", \"10min\", \"1h\"."),
        Table("[server]", frozenset(load._SERVER_FIELDS), model.ServerLimits),
        Table("[tls]", frozenset(load._TLS_FIELDS), model.Tls, {},
              "HTTPS on the listen port. Both fields, or no table. Relative paths are read next to the config file."),
        Table("[cors]", frozenset(load._CORS_FIELDS), model.Cors),
        Table("[limits]", frozenset(load._LIMIT_FIELDS), model.TrafficLimits),
        Table("[ban]", frozenset(load._BAN_FIELDS), model.Ban, {},
              "No `[ban]` table: no bans. An empty `[ban]` table turns them on with the defaults below."),
        Table("[metrics]", frozenset(load._METRICS_FIELDS), model.MetricsSettings),
        Table("[cluster]", frozenset(load._CLUSTER_FIELDS), model.Cluster, {},
              "Several gates share their limits through one Redis "
              "(see [hosts-and-redis.md](hosts-and-redis.md))."),
        Table("[budgets]", frozenset(load._BUDGET_FIELDS), model.Budgets, {},
              "How a generation is charged against its key's `tokens` budget "
              "(see [security.md](security.md#token-budgets))."),
    ]


def _is_table(name: str) -> bool:
    return name in {"log", "timeouts", "server", "tls", "cors", "limits", "ban", "metrics", "routing", "cluster",
                    "budgets"}


def field_comments(source: str) -> dict[tuple[str, str], str]:
    """(class, attribute) -> the comment beside the attribute, or the comment lines just above it."""
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    lines = source.splitlines()
    out: dict[tuple[str, str], str] = {}
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ClassDef):
            continue
        for stmt in node.body:
            if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
                continue
            text = comments.get(stmt.lineno, "")
            if not text:  # comment lines directly above the field
                above: list[str] = []
                n = stmt.lineno - 1
                while n in comments and lines[n - 1].lstrip().startswith("#"):
                    above.insert(0, comments[n])
                    n -= 1
                text = " ".join(above)
            out[(node.name, stmt.target.id)] = text
    return out


def _kind(attr: str, annotation: str) -> str:
    a = annotation.replace(" | None", "")
    if attr in _SIZES:
        return "size"
    if a == "float":
        return "number" if attr in _NUMBERS else "duration"
    kinds = {"str": "string", "int": "integer", "bool": "boolean", "tuple[str, ...]": "array of strings",
            "Rate": "rate", "Budget": "budget", "date": "date", "datetime": "UTC date-time", "Path": "path",
            "Upstream": "URL", "tuple[str, int] | None": "host:port", "tuple[str, int]": "host:port",
            "bytes": "64 hex digits", "tuple[tuple[str, str], ...]": "table of strings"}
    return kinds.get(a, a)


def _default(table: Table, attr: str, f: dataclasses.Field[Any]) -> str:
    if table.owner is model.Config and attr in _TOP_DEFAULTS:
        return f'`"{_TOP_DEFAULTS[attr]}"`'
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "required"
    return _toml_value(attr, f.type if isinstance(f.type, str) else str(f.type), value)


def _toml_value(attr: str, annotation: str, value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    kind = _kind(attr, annotation)
    if kind == "duration":
        return f'`"{_duration(float(value))}"`'
    if kind == "size":
        return f'`"{_size(int(value))}"`'
    if isinstance(value, str):
        return f'`"{value}"`'
    if kind == "table of strings":
        return "none"
    if isinstance(value, tuple):
        return "`[" + ", ".join(f'"{v}"' for v in value) + "]`"
    if isinstance(value, float) and value.is_integer():
        return f"`{int(value)}`"
    if isinstance(value, (date, datetime)):
        return f"`{value.isoformat()}`"
    return f"`{value}`"


def _duration(seconds: float) -> str:
    for unit, size in (("h", 3600.0), ("min", 60.0), ("s", 1.0)):
        if seconds >= size and (seconds / size).is_integer():
            return f"{int(seconds / size)}{unit}"
    return f"{round(seconds * 1000)}ms"


def _size(n: int) -> str:
    for unit, size in (("GiB", 1024 ** 3), ("MiB", 1024 ** 2), ("KiB", 1024)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


class ReferenceError(Exception):
    """A field the reference cannot describe: the model or the table list needs a line."""


def render() -> str:
    """The whole of docs/configuration.md."""
    comments = field_comments(Path(model.__file__).read_text(encoding="utf-8"))
    covered: set[str] = set()
    out = ["# Configuration reference", "",
           "Every field of `guardproxy.toml`, its type, its default and what it means. This page is generated",
           "from the code (`guardproxy/config/model.py` and the loader): `make docs` writes it, and a test fails",
           "when the two differ. How the file is found, reloads and examples: [operations.md](operations.md).",
           "", "Types: a *duration* is a number of seconds or a string like `\"250ms\"`, `\"30s\"`, `\"10min\"`,",
           "`\"1h\"`; a *size* is a number of bytes or a string like `\"64MiB\"`, `\"512KiB\"`; a *rate* is",
           "`\"30/min\"`, `\"5/s\"`, `\"1000/h\"` or `\"10/5min\"`; a *budget* is `\"200000/day\"`, `\"20000/h\"` or",
           "`\"3000000/month\"`. A mistake stops start-up with one line naming the file, line and field.", ""]
    for table in tables():
        covered.add(table.heading)
        out += [f"## {table.heading}", ""]
        if table.intro:
            out += [table.intro, ""]
        out += ["| field | type | default | meaning |", "|---|---|---|---|"]
        attrs = {f.name: f for f in dataclasses.fields(table.owner)}
        order = {attr: i for i, attr in enumerate(attrs)}

        def position(name: str) -> tuple[int, str]:  # the dataclass's order, which groups related fields
            return order.get(table.renames.get(name, name), -1), name

        for name in sorted(table.fields, key=position):
            attr = table.renames.get(name, name)
            f = attrs.get(attr)
            if f is None:
                raise ReferenceError(f"{table.heading} {name}: no field {table.owner.__name__}.{attr} in model.py "
                                     f"(add a rename in guardproxy/config/reference.py)")
            meaning = comments.get((table.owner.__name__, attr), "")
            if not meaning:
                raise ReferenceError(f"{table.heading} {name}: {table.owner.__name__}.{attr} in model.py needs a "
                                     f"comment saying what it means")
            annotation = f.type if isinstance(f.type, str) else str(f.type)
            kind, default = _kind(attr, annotation), _default(table, attr, f)
            if table.owner is model.KeyEntry and name == "key":  # the plaintext flag stands for the key itself
                kind, default = "string", "none"
                meaning = "the key in plaintext, for hand-written configs (warned about at start-up)"
            elif name in ("name", "key_sha256", "url"):
                default = "required"
            out.append(f"| `{name}` | {kind} | {default} | {meaning.replace('|', '&#124;')} |")
        out.append("")
    missing = {name for name in load._TOP if _is_table(name)} - {t.heading.strip("[]") for t in tables()}
    if missing:
        raise ReferenceError(f"tables without a reference section: {sorted(missing)}")
    return "\n".join(out)


def main(argv: list[str]) -> int:
    try:
        text = render()
    except ReferenceError as e:
        print(f"reference: {e}", file=sys.stderr)
        return 2
    if argv[1:] == ["--write"]:
        DOC.write_text(text, encoding="utf-8")
        print(f"wrote {DOC}")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
