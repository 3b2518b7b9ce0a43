"""Rates, bans, trusted proxies and the concurrency gate, with a fake clock."""

from __future__ import annotations

import pytest

from guardproxy.config.model import Ban, Rate
from guardproxy.decisions.concurrency import ConcurrencyGate, QueueFull
from guardproxy.decisions.limits import BanTable, RateTable, TrustedProxies


def test_token_bucket_with_fake_clock() -> None:
    t = RateTable()
    r = Rate(3, 60.0)
    assert [t.hit("a", r, 0.0) for _ in range(3)] == [0, 0, 0]
    assert t.hit("a", r, 0.0) == pytest.approx(20.0)
    assert t.hit("b", r, 0.0) == 0  # another address has its own bucket
    assert t.hit("a", r, 19.0) == pytest.approx(1.0)
    assert t.hit("a", r, 20.0) == 0


def test_tables_are_bounded() -> None:
    t = RateTable(max_tracked=100)
    bans = BanTable(Ban(2, 60, 60), max_tracked=100)
    for i in range(10000):
        t.hit(f"10.0.{i // 256}.{i % 256}", Rate(1, 1), 0.0)
        bans.failure(f"ip{i}", 0.0)
        bans.failure(f"ip{i}", 0.0)
    assert len(t) == 100 and bans.sizes()[0] <= 100 and bans.sizes()[1] <= 100


def test_ban_and_unban_with_fake_clock() -> None:
    b = BanTable(Ban(3, 60.0, 900.0))
    assert not b.failure("1.2.3.4", 0) and not b.failure("1.2.3.4", 1)
    assert b.retry_after("1.2.3.4", 2) == 0
    assert b.failure("1.2.3.4", 2)
    assert b.retry_after("1.2.3.4", 3) == pytest.approx(899)
    assert b.retry_after("5.6.7.8", 3) == 0
    assert b.retry_after("1.2.3.4", 902) == 0
    # Failures spread wider than the window never ban.
    for t in range(0, 1000, 61):
        assert not b.failure("9.9.9.9", t)


def test_client_address_trusts_only_trusted_peers() -> None:
    tp = TrustedProxies(["10.0.0.0/8"])
    assert tp.client_address("203.0.113.9", [b"1.1.1.1"], "x-forwarded-for") == "203.0.113.9"
    assert tp.client_address("10.0.0.2", [b"6.6.6.6, 198.51.100.7"], "x-forwarded-for") == "198.51.100.7"
    assert tp.client_address("10.0.0.2", [b"198.51.100.7, 10.0.0.5"], "x-forwarded-for") == "198.51.100.7"
    assert tp.client_address("10.0.0.2", [b'for="[2001:db8::1]:4711", for=10.1.1.1'], "forwarded") == "2001:db8::1"
    assert tp.client_address("10.0.0.2", [b"garbage"], "x-forwarded-for") == "10.0.0.2"
    assert tp.client_address("10.0.0.2", [b"7.7.7.7", b"198.51.100.9"], "x-real-ip") == "198.51.100.9"


def test_gate_is_fair_across_keys() -> None:
    g = ConcurrencyGate(1)
    assert g.try_acquire("busy", None)
    for i in range(5):
        g.enqueue("busy", None, f"busy{i}")
    g.enqueue("quiet", None, "quiet0")
    order = []
    holder = "busy"
    for _ in range(6):
        (w,) = g.release(holder)
        order.append(w)
        holder = w.rstrip("0123456789")
    assert order[:2] == ["busy0", "quiet0"]
    assert g.total == 1 and g.queued == 0


def test_gate_per_key_limit_and_queue_bound() -> None:
    g = ConcurrencyGate(None, max_queue=2)
    assert g.try_acquire("a", 1) and not g.try_acquire("a", 1) and g.try_acquire("b", 1)
    g.enqueue("a", 1, "a1")
    g.enqueue("a", 1, "a2")
    with pytest.raises(QueueFull):
        g.enqueue("b", 1, "b1")
    assert g.cancel("a", "a2") and not g.cancel("a", "zz")
    assert g.release("b") == []
    assert g.release("a") == ["a1"]


def test_ipv6_counts_by_slash_64() -> None:
    from guardproxy.decisions.limits import address_bucket
    assert address_bucket("2001:db8:1:2:aaaa::1") == address_bucket("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert address_bucket("2001:db8:1:3::1") != address_bucket("2001:db8:1:2::1")
    assert address_bucket("::ffff:192.0.2.7") == "192.0.2.7" and address_bucket("192.0.2.7") == "192.0.2.7"


def test_per_address_cap_counts_ipv4_and_ipv6_slash_64() -> None:
    from guardproxy.decisions.limits import address_bucket
    assert address_bucket("203.0.113.7") == "203.0.113.7"
    assert address_bucket("::ffff:203.0.113.7") == "203.0.113.7"
    assert address_bucket("2001:db8:1:2:aaaa::1") == address_bucket("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert address_bucket("2001:db8:1:3::1") != address_bucket("2001:db8:1:2::1")


def test_occupancy_counts_hosts_for_the_shared_states_own_share() -> None:
    from guardproxy.decisions.concurrency import Occupancy
    o = Occupancy()
    o.take("a", "gpu1")
    assert not o.fits("b", None, "gpu1", 1, None) and o.fits("b", None, "gpu2", 1, None)
    o.take("b", "gpu2")
    o.drop("a", "gpu1")
    assert o.hosts == {"gpu2": 1} and o.total == 1 and o.fits("a", None, "gpu1", 1, None)


def test_fair_queue_order_for_a_grant_pass() -> None:
    from guardproxy.decisions.concurrency import FairQueue
    q = FairQueue(10)
    for key, item in [("a", "a1"), ("a", "a2"), ("a", "a3"), ("b", "b1"), ("c", "c1"), ("c", "c2")]:
        q.push(key, item)
    assert [i for _, i in q.in_turn(10)] == ["a1", "b1", "c1", "a2", "c2", "a3"]
    assert [i for _, i in q.in_turn(4)] == ["a1", "b1", "c1", "a2"]
    assert q.remove("a", lambda i: i == "a1") == "a1" and q.remove("a", lambda i: i == "zz") is None
    q.served("a")
    assert q.keys() == ["b", "c", "a"] and q.queued == 5


def test_shares_of_limits_when_each_instance_decides_alone() -> None:
    from guardproxy.config.model import Rate
    from guardproxy.decisions.limits import limit_share, rate_share
    assert rate_share(Rate(30, 60.0), 1) == Rate(30, 60.0)
    assert rate_share(Rate(30, 60.0), 4) == Rate(7, 60.0)
    assert rate_share(Rate(1, 60.0), 3) == Rate(1, 180.0)       # never zero: one per longer period
    assert limit_share(None, 3) is None and limit_share(8, 3) == 2 and limit_share(1, 3) == 1


def test_a_ban_imposed_from_elsewhere() -> None:
    b = BanTable(Ban(3, 60.0, 900.0))
    b.impose("198.51.100.1", 1500.0)
    assert b.retry_after("198.51.100.1", 1000.0) == 500.0 and b.retry_after("198.51.100.1", 1500.0) == 0.0


@pytest.mark.parametrize("now", [0.0, 3974.827860110608, 16323.925035323095, 65260.63348441413, 524147.11025838455])
def test_a_bans_retry_after_is_its_duration_when_the_clock_has_not_ticked(now: float) -> None:
    # Windows' clock ticks every 15.6 ms: the check often reads the very time the ban was set at,
    # and (now + 900) - now may then come out a hair above 900 in floating point.
    from guardproxy.decisions.limits import retry_after_header
    bans = BanTable(Ban(after_failures=1, window=60.0, duration=900.0))
    assert bans.failure("a", now)
    assert retry_after_header(bans.retry_after("a", now)) == ("Retry-After", "900")
    assert retry_after_header(0.4) == ("Retry-After", "1") and retry_after_header(2.0001) == ("Retry-After", "3")
