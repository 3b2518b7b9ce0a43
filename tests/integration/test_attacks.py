"""Raw-byte attack requests against a real guardproxy, table-driven.

Every case is sent twice: in one write, and one byte per write (so each
check must hold whatever the segmentation).  For each refusal the test
asserts the status, a JSON error body, `Connection: close`, that the
connection really closes, that the refusal was logged, and that the
upstream saw nothing at all.

Case ids in the comments point at the public descriptions the cases were
written from (the cases themselves are written here, not copied):
  RFC 9112 sections (2.2 message parsing, 2.3 version, 3 request line,
  3.2 target/Host, 5 fields, 6.1 Transfer-Encoding, 6.3 body length,
  7.1 chunked coding, 11.2 smuggling);
  llhttp test/request/*.md headings ("llhttp invalid.md: ...");
  aws http-desync-guardian tests/*.yaml case names ("desync severe.yaml: ...");
  http-garden TROPHIES.md classes of bugs ("garden: ...");
  h11 issues #182 (head size checked only while waiting) and #155 (no field count).
"""

from __future__ import annotations


import pytest

from conftest import Proxy
from support.upstreams import RecordingUpstream
from support.attack_cases import K, ADMIN_K, Case, HEAD_CASES, BODY_CASES, gate, send, check_refusal  # noqa: F401 (gate: a fixture)


@pytest.mark.parametrize("bytewise", [False, True], ids=["one-write", "bytewise"])
@pytest.mark.parametrize("case", HEAD_CASES, ids=[c.id for c in HEAD_CASES])
async def test_head_attack_refused_and_upstream_untouched(gate: Proxy, upstream: RecordingUpstream,
                                                          case: Case, bytewise: bool) -> None:
    raw = await send(gate.port, case.raw, bytewise)
    check_refusal(raw, case.status)
    assert upstream.saw_nothing
    entry = gate.log_lines()[-1]
    assert entry["status"] == case.status and entry["outcome"] == "refused"
    if case.id in ("method-put", "cl-te"):
        assert (entry["method"], entry["path"]) == (case.raw.split(b" ")[0].decode(), case.raw.split(b" ")[1].decode())


@pytest.mark.parametrize("streamed", [False, True], ids=["checked", "streamed"])
@pytest.mark.parametrize("bytewise", [False, True], ids=["one-write", "bytewise"])
@pytest.mark.parametrize("case", BODY_CASES, ids=[c.id for c in BODY_CASES])
async def test_body_attack_refused_and_upstream_never_completes(gate: Proxy, upstream: RecordingUpstream,
                                                                case: Case, bytewise: bool, streamed: bool) -> None:
    raw = await send(gate.port, case.raw.replace(K, ADMIN_K) if streamed else case.raw, bytewise)
    check_refusal(raw, case.status)
    if not streamed:
        # A body whose model is checked is read whole first: nothing went upstream.
        assert upstream.saw_nothing
    # Streamed, the head went upstream before the body turned out bad; the
    # upstream connection was then closed before a complete request existed.
    assert not upstream.got_request.is_set()
    assert upstream.bodies == []
    for data in upstream.received:
        assert not data.partition(b"\r\n\r\n")[2].endswith(b"0\r\n\r\n")  # (a head's last line may end in 0)
    assert gate.log_lines()[-1]["status"] == case.status


def test_there_are_enough_cases() -> None:
    ids = [c.id for c in HEAD_CASES + BODY_CASES]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 60
