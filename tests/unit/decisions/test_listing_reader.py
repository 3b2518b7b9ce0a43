"""A host's model list read as untrusted input: bounds, no recursion, a slice at a time."""

from __future__ import annotations

import json
import random
import sys

import pytest

from guardproxy.decisions import listing_reader as lr
from guardproxy.decisions.listing_reader import ListingError, ListingReader, read_listing


def test_reads_what_json_reads() -> None:
    body = b'{"models":[{"name":"a"},{"name":"b","details":{"families":["x"]}}]}'
    assert read_listing(body) == json.loads(body)["models"]
    assert read_listing(b' { "models" : [ ] } ') == []
    assert read_listing(b'{"object":"list","data":[{"id":"a"}]}', "data") == [{"id": "a"}]


def test_as_json_loads_the_last_field_wins_and_other_values_are_only_skipped() -> None:
    body = b'{"x":{"models":[1],"y":"]}\\"["},"models":[{"name":"first"}],"models":[{"name":"last\xc3\xa9"}],"z":null}'
    assert read_listing(body) == [{"name": "last\u00e9"}]


def test_elements_that_are_not_objects_are_left_out() -> None:
    assert read_listing(b'{"models":[1,"s",[{"name":"in"}],{"name":"a"},null]}') == [{"name": "a"}]


@pytest.mark.parametrize("body, why", [
    (b"", "not a JSON object"),
    (b"[]", "not a JSON object"),
    (b"<html>", "not a JSON object"),
    (b"{}", "no models list"),
    (b'{"models":null}', "not a list"),
    (b'{"models":{"a":1}}', "not a list"),
    (b'{"models":[{"name":"a"}', "malformed"),
    (b'{"models":[{"name":"a"}]', "end of the document"),
    (b'{"models":[{"a":1}{"b":2}]}', "malformed"),
    (b'{"models":[{"a":1},]}', "malformed"),
    (b'{"models":[]} trailing', "after the document"),
    (b'{"models":[]]', "mismatched"),
])
def test_malformed_lists_are_refused(body: bytes, why: str) -> None:
    with pytest.raises(ListingError, match=why):
        read_listing(body)


@pytest.mark.parametrize("where", ["entry", "elsewhere", "list"])
def test_deep_nesting_is_refused_without_recursion(where: str) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    body = {"entry": b'{"models":[{"a":' + deep + b'}]}',
            "elsewhere": b'{"x":' + deep + b',"models":[]}',
            "list": b'{"models":[' + deep + b"]}"}[where]
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(200)  # even with little stack left, a clean refusal
    try:
        with pytest.raises(ListingError, match="deep|large"):
            read_listing(body)
    finally:
        sys.setrecursionlimit(limit)


def test_depth_within_the_bound_is_read() -> None:
    value: object = 1
    for _ in range(lr.MAX_DEPTH - 2):  # (the top object and the list are two levels)
        value = {"a": value}
    assert read_listing(json.dumps({"models": [value]}).encode()) == [value]
    with pytest.raises(ListingError, match="deep"):
        read_listing(json.dumps({"models": [{"a": value}]}).encode())


def test_at_most_max_entries() -> None:
    def body(n: int) -> bytes:
        return json.dumps({"models": [{"name": f"m{i}"} for i in range(n)]}).encode()
    assert len(read_listing(body(lr.MAX_ENTRIES))) == lr.MAX_ENTRIES
    with pytest.raises(ListingError, match="entries"):
        read_listing(body(lr.MAX_ENTRIES + 1))


def test_large_entries_and_strings_are_refused() -> None:
    with pytest.raises(ListingError, match="large"):
        read_listing(b'{"models":[{"name":"' + b"x" * (lr.MAX_ENTRY + 1) + b'"}]}')
    with pytest.raises(ListingError, match="large"):
        read_listing(b'{"models":[{"a":[' + b"1," * lr.MAX_ENTRY + b"1]}]}")
    with pytest.raises(ListingError, match="string"):
        read_listing(b'{"x":"' + b"x" * (lr.MAX_STRING + 1) + b'","models":[]}')


def test_entries_across_the_decoding_windows_read_exactly() -> None:
    rnd = random.Random(7)
    for ensure_ascii in (True, False):
        entries = [{"name": "\u00e9" * rnd.randint(0, 300) + str(i), "size": rnd.randint(0, 10 ** 12),
                    "details": {"families": ["x" * rnd.randint(0, 3000)]}} for i in range(1500)]
        body = json.dumps({"models": entries, "after": [1, 2]}, ensure_ascii=ensure_ascii).encode()
        assert read_listing(body) == entries


def test_the_work_comes_in_small_slices() -> None:
    # 110,000 entries (7 MB): refused after MAX_ENTRIES, in slices of STEP_ENTRIES.
    body = b'{"models":[' + b",".join(b'{"name":"m%06d"}' % i for i in range(110_000)) + b"]}"
    reader = ListingReader(body)
    steps = 0
    with pytest.raises(ListingError, match="entries"):
        while not reader.step():
            steps += 1
    assert steps >= lr.MAX_ENTRIES // lr.STEP_ENTRIES - 1
    # Skipping what is not the list is sliced too: STEP_TOKENS brackets and strings at a time.
    junk = b'{"junk":[' + b'"s",' * 100_000 + b'"s"],"models":[]}'
    reader = ListingReader(junk)
    steps = 1
    while not reader.step():
        steps += 1
    assert reader.entries == [] and steps >= 100_000 // lr.STEP_TOKENS
