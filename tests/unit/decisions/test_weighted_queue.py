"""The fair queue with key weights: grants in proportion to weight while keys wait, no key starves."""

from __future__ import annotations

from guardproxy.decisions.concurrency import ConcurrencyGate, FairQueue
from guardproxy.decisions.hostqueue import Waiting
from guardproxy.decisions.routing import Host, Request


def served(q: FairQueue, n: int) -> list[str]:
    out = []
    for _ in range(n):
        key = q.keys()[0]
        q.pop(key)
        out.append(key)
    return out


def test_a_key_of_weight_4_gets_4_grants_for_each_of_a_weight_1_key() -> None:
    q = FairQueue()
    for i in range(20):
        q.push("heavy", i, 4)
        q.push("light", i)
    order = served(q, 20)
    assert order[:10] == ["heavy"] * 4 + ["light"] + ["heavy"] * 4 + ["light"]
    assert order.count("heavy") == 16 and order.count("light") == 4


def test_weights_of_one_are_plain_round_robin_and_no_key_starves() -> None:
    q = FairQueue()
    for i in range(5):
        q.push("a", i)
    q.push("b", 0)
    q.push("c", 0, 1000)
    order = served(q, 7)
    assert order.index("b") <= 2 and order.index("c") <= 2   # every key has its turn in the first round
    assert order.count("a") == 5


def test_a_fractional_weight_carries_over_to_the_next_turn() -> None:
    q = FairQueue()
    for i in range(30):
        q.push("x", i, 2.5)
        q.push("y", i)
    order = served(q, 21)
    assert order.count("x") == 15 and order.count("y") == 6   # 2.5 : 1
    assert order[:7] == ["x", "x", "y", "x", "x", "x", "y"]


def test_the_order_offered_to_redis_follows_the_weights() -> None:
    q = FairQueue()
    for i in range(6):
        q.push("heavy", f"h{i}", 3)
        q.push("light", f"l{i}")
    assert [item for _, item in q.in_turn(9)] == ["h0", "h1", "h2", "l0", "h3", "h4", "h5", "l1", "l2"]
    q.pop("heavy")   # one grant of heavy's turn: two left before light's
    assert [item for _, item in q.in_turn(4)] == ["h1", "h2", "l0", "h3"]


def test_the_in_process_gate_grants_by_weight() -> None:
    gate = ConcurrencyGate(max_total=1)
    assert gate.try_acquire("other", None)
    for i in range(10):
        gate.enqueue("heavy", None, f"h{i}", 4)
        gate.enqueue("light", None, f"l{i}", 1)
    woken = []
    key = "other"
    for _ in range(10):
        (w,) = gate.release(key)
        woken.append(w)
        key = "heavy" if w.startswith("h") else "light"
    assert [w[0] for w in woken] == list("hhhhlhhhhl")


def test_the_host_queue_grants_by_weight() -> None:
    waiting: Waiting[str] = Waiting()
    host = Host("gpu", 1)
    for i in range(10):
        waiting.enqueue("heavy", Request("m"), f"h{i}", 4)
        waiting.enqueue("light", Request("m"), f"l{i}")
    granted = []
    for _ in range(10):
        ((w, h),) = waiting.grant(lambda req: host, lambda: host.in_flight < 1)
        granted.append(w[0])
        h.in_flight -= 1   # it ends at once
    assert granted == list("hhhhlhhhhl")
