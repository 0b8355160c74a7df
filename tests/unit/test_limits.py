"""dataplane/limits.py: the decisions, with the clock passed in."""

from __future__ import annotations

from dataplane.limits import (
    ConnectionCounter,
    LimitRegistry,
    RateLimit,
    TokenBucket,
    Whitelist,
    default_max_connections,
    parse_whitelist,
)


class Conn:
    def __init__(self) -> None:
        self.closed = False

    def is_closing(self) -> bool:
        return self.closed


def test_rate_limit_allows_burst_of_five_times_the_rate_then_429_with_retry_after() -> None:
    rate = RateLimit(2)
    assert rate.burst == 10
    assert [rate.retry_after("10.0.0.1", 100.0) for _ in range(10)] == [0.0] * 10
    wait = rate.retry_after("10.0.0.1", 100.0)
    assert 0.49 < wait <= 0.5  # one token comes back after 1/rate seconds
    assert rate.retry_after("10.0.0.2", 100.0) == 0.0  # another client has its own bucket
    assert rate.retry_after("10.0.0.1", 100.6) == 0.0  # refilled at 2/s


def test_whitelist_exempts_and_handles_mapped_and_bad_addresses() -> None:
    networks, problems = parse_whitelist(["10.0.0.0/8", " 192.168.1.7 ", "", "not-a-cidr"])
    assert problems == ["'not-a-cidr' is not an IP address or CIDR"]
    white = Whitelist(networks)
    assert white.exempt("10.1.2.3") and white.exempt("192.168.1.7") and white.exempt("::ffff:10.9.9.9")
    assert not white.exempt("11.0.0.1") and not white.exempt("garbage")
    rate = RateLimit(1, white)
    assert all(rate.retry_after("10.0.0.1", 5.0) == 0.0 for _ in range(50))
    assert [rate.retry_after("11.0.0.1", 5.0) for _ in range(6)][-1] > 0


def test_rate_limit_memory_is_bounded_and_idle_buckets_are_dropped() -> None:
    rate = RateLimit(10, max_keys=100)
    for i in range(1000):
        rate.retry_after(f"10.0.{i // 256}.{i % 256}", 1.0)
    assert len(rate) <= 100 and rate.evicted > 0
    idle = RateLimit(10)  # burst 50 refills in 5 s: older buckets are as good as absent
    for i in range(50):
        idle.retry_after(f"10.1.0.{i}", float(i))
    assert len(idle) < 20


def test_token_bucket() -> None:
    bucket = TokenBucket(2, 2, 0.0)
    assert bucket.take(0.0) and bucket.take(0.0) and not bucket.take(0.0)
    assert not bucket.take(0.4) and bucket.take(0.6)


def test_connection_counter_counts_live_handles_per_key() -> None:
    counter = ConnectionCounter()
    a, b, c = Conn(), Conn(), Conn()
    assert counter.admit("ip1", a, 2) and counter.admit("ip1", b, 2)
    assert not counter.admit("ip1", c, 2)
    assert counter.admit("ip2", c, 2)
    a.closed = True  # a connection that ended by any path stops counting
    assert counter.admit("ip1", Conn(), 2)
    assert counter.count("ip1") == 2


def test_connection_counter_forgets_keys_whose_connections_ended() -> None:
    counter = ConnectionCounter()
    for i in range(5000):
        conn = Conn()
        counter.admit(f"ip{i}", conn, 1)
        conn.closed = True
    assert len(counter) < 2100


def test_registry_keeps_state_across_applies_and_a_changed_rate() -> None:
    registry = LimitRegistry()
    first = registry.rate_limit("ns/a", 1, Whitelist())
    for _ in range(5):
        first.retry_after("10.0.0.1", 0.0)
    assert registry.rate_limit("ns/a", 1, Whitelist()) is first
    changed = registry.rate_limit("ns/a", 2, Whitelist())
    assert changed is not first and changed.retry_after("10.0.0.1", 0.0) > 0  # the spent bucket came along
    assert changed.retry_after("10.0.0.1", 0.5) == 0.0  # and refills at the new rate
    assert registry.counter("ns/a") is registry.counter("ns/a")
    registry.retain([], [])
    assert registry.rate_limit("ns/a", 2, Whitelist()) is not changed


def test_default_max_connections_leaves_a_reserve() -> None:
    assert default_max_connections(1024) == 384
    assert default_max_connections(100) == 64
    assert default_max_connections() >= 64


def test_dataplane_flags_reach_the_config_and_bad_values_are_refused() -> None:
    import argparse

    import pytest

    from dataplane.runtime import DataPlaneConfig
    from dataplane.server import add_arguments, config_from_args

    def config(*argv: str) -> DataPlaneConfig:
        parser = argparse.ArgumentParser()
        add_arguments(parser)
        return config_from_args(parser.parse_args(list(argv)))

    cfg = config("--max-connections", "500", "--max-connections-per-ip", "20", "--max-handshakes-per-second", "300")
    assert (cfg.max_connections, cfg.max_connections_per_ip, cfg.max_handshakes_per_second) == (500, 20, 300.0)
    assert config().max_connections == default_max_connections()
    assert config("--max-connections", "0").max_connections == 0
    for bad in (("--max-connections", "-2"), ("--max-connections-per-ip", "-1"),
                ("--max-handshakes-per-second", "nan")):
        with pytest.raises(SystemExit):
            config(*bad)
