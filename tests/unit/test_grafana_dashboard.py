"""packaging/grafana/guardproxy.json: an importable dashboard whose queries name only guardproxy's series."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

from support.metric_names import HISTOGRAMS, SERIES

DASHBOARD = Path(__file__).resolve().parents[2] / "packaging" / "grafana" / "guardproxy.json"
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}

# Every series guardproxy exposes; histograms are queried through their _bucket series.
QUERIED = {name + "_bucket" if name in HISTOGRAMS else name for name in SERIES}
FUNCTIONS = {"sum", "max", "rate", "histogram_quantile"}


def load() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def names_in(expr: str) -> tuple[set[str], set[str]]:
    """(series, functions) a PromQL expression names: label matchers, ranges, grouping clauses
    and strings removed, an identifier before "(" is a function, any other one a series."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"\{[^}]*\}", "", e)
    e = re.sub(r"\[[^\]]*\]", "", e)
    e = re.sub(r"\b(?:by|without)\s*\([^)]*\)", "", e)
    series, functions = set(), set()
    for m in re.finditer(r"([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?", e):
        (functions if m.group(2) else series).add(m.group(1))
    return series, functions


def targets() -> Iterator[tuple[str, dict[str, Any]]]:
    for panel in load()["panels"]:
        for t in panel["targets"]:
            yield panel["title"], t


def test_the_expression_reader_sees_series_and_functions() -> None:
    assert names_in('histogram_quantile(0.99, sum by (le) (rate(x_bucket{a=~"$a", b="}"}[$__rate_interval])))') \
        == ({"x_bucket"}, {"histogram_quantile", "sum", "rate"})


def test_every_query_names_only_guardproxy_series() -> None:
    seen: set[str] = set()
    for title, t in targets():
        series, functions = names_in(t["expr"])
        assert series and series <= QUERIED, (title, t["expr"])
        assert functions <= FUNCTIONS, (title, t["expr"])
        seen |= series
    for var in load()["templating"]["list"]:
        m = re.fullmatch(r"label_values\((.+), *(\w+)\)", var["query"]["query"])  # (series, label name)
        assert m is not None, var["name"]
        series, functions = names_in(m.group(1))
        assert len(series) == 1 and series <= QUERIED and not functions, var["name"]
    assert seen == QUERIED  # and every series has a panel


def test_the_panels_the_issue_asks_for_are_there() -> None:
    exprs = {title: [t["expr"] for t in panel_targets] for title, panel_targets in
             ((p["title"], p["targets"]) for p in load()["panels"])}
    flat = [e for es in exprs.values() for e in es]
    assert any("by (key, model, kind) (rate(guardproxy_tokens_total" in e for e in flat)
    assert any("by (code) (rate(guardproxy_requests_total" in e for e in flat)
    for q in ("0.5", "0.99"):
        assert any(e.startswith(f"histogram_quantile({q}, sum by (le) (rate(guardproxy_time_to_first_byte_seconds_bucket")
                   for e in flat)
        assert any(e.startswith(f"histogram_quantile({q}, sum by (le) (rate(guardproxy_request_duration_seconds_bucket")
                   for e in flat)
    assert any("by (key) (guardproxy_streams_active" in e for e in flat)
    assert any("by (reason) (rate(guardproxy_refusals_total" in e for e in flat)
    assert any("by (upstream) (guardproxy_upstream_up" in e for e in flat)
    assert any("by (upstream) (guardproxy_upstream_in_flight" in e for e in flat)
    assert any(e.startswith("sum(guardproxy_queue_waiting") for e in flat)


def test_it_imports_with_a_prometheus_data_source_chosen_at_import() -> None:
    d = load()
    assert d["schemaVersion"] == 39 and d["uid"] == "guardproxy" and d["id"] is None
    assert [(i["name"], i["type"], i["pluginId"]) for i in d["__inputs"]] == [("DS_PROMETHEUS", "datasource", "prometheus")]
    assert all(p["datasource"] == DATASOURCE for p in d["panels"])
    assert all(t["datasource"] == DATASOURCE for _, t in targets())
    assert all(v["datasource"] == DATASOURCE for v in d["templating"]["list"])
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    assert {r["id"] for r in d["__requires"] if r["type"] == "panel"} == {p["type"] for p in d["panels"]}
    for _, t in targets():
        refs = [x["refId"] for x in next(p for p in d["panels"] if t in p["targets"])["targets"]]
        assert len(refs) == len(set(refs))


def test_panels_do_not_overlap_on_the_24_column_grid() -> None:
    cells: dict[tuple[int, int], str] = {}
    for p in load()["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, (p["title"], cells.get((x, y)))
                cells[x, y] = p["title"]
