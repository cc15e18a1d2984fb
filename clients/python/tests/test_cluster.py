"""Redis Cluster mode against a real cluster of three masters on loopback
(the `redis_cluster` fixture): history publishes get per-channel ids in keys
of the channel's slot, on the master that serves it; plain publishes are
SPUBLISH, received by a sharded subscriber on that master; sse.lua is loaded
on every master."""

import time
from typing import Dict, Iterator, List

import pytest
import redis
from redis.cluster import RedisCluster

from nginx_sse import load_function, publish

FUNCTION = "nginx_sse"


@pytest.fixture
def rc(redis_cluster) -> Iterator[RedisCluster]:
    client = RedisCluster(host="127.0.0.1", port=redis_cluster.ports[0])
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def nodes(redis_cluster) -> Iterator[Dict[int, redis.Redis]]:
    """A plain client on each master, by port."""
    clients = {p: redis.Redis(host="127.0.0.1", port=p, decode_responses=True)
               for p in redis_cluster.ports}
    try:
        yield clients
    finally:
        for c in clients.values():
            c.close()


def one_channel_per_master(rc: RedisCluster, stem: str) -> Dict[int, str]:
    """{master port: a channel whose slot that master serves}, for every master."""
    masters = {n.port for n in rc.get_primaries()}
    found: Dict[int, str] = {}
    for i in range(1000):
        channel = f"{stem}:{i}"
        found.setdefault(rc.get_node_from_key(channel).port, channel)
        if len(found) == len(masters):
            return found
    raise AssertionError(f"no channel {stem}:N found for every master")


def delete_function(nodes: Dict[int, redis.Redis]) -> None:
    for node in nodes.values():
        if function_loaded(node):
            node.execute_command("FUNCTION", "DELETE", FUNCTION)


def function_loaded(node: redis.Redis) -> bool:
    return bool(node.execute_command("FUNCTION", "LIST", "LIBRARYNAME", FUNCTION))


def next_message(sub: "redis.client.PubSub", timeout: float = 5.0) -> dict:
    """The next message or smessage (subscription confirmations skipped)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = sub.get_message(timeout=max(0.01, deadline - time.monotonic()))
        if m and m["type"] in ("message", "smessage"):
            return m
    raise AssertionError(f"no message within {timeout} s")


def subscribed(sub: "redis.client.PubSub", n: int) -> None:
    """Waits for the confirmations of n (s)subscribe calls."""
    got = 0
    deadline = time.monotonic() + 5
    while got < n and time.monotonic() < deadline:
        m = sub.get_message(timeout=0.5)
        if m and m["type"] in ("subscribe", "ssubscribe"):
            got += 1
    assert got == n, "subscription not confirmed"


def test_history_has_per_channel_ids_on_the_master_of_the_channel(rc, nodes):
    delete_function(nodes)  # the first publish loads it, on every master
    owners = one_channel_per_master(rc, "hist")
    ids: Dict[str, List[int]] = {ch: [] for ch in owners.values()}
    for n in range(1, 4):
        for ch in owners.values():
            ids[ch].append(publish(rc, ch, {"n": n}, history=True))
    assert ids == {ch: [1, 2, 3] for ch in owners.values()}, "one sequence per channel"
    assert all(function_loaded(node) for node in nodes.values()), "sse.lua on every master"

    for port, ch in owners.items():
        node = nodes[port]
        entries = node.xrange(f"sse:{{{ch}}}:h")
        assert [(eid, f["d"], f["p"]) for eid, f in entries] == [
            ("1-0", '{"n":1}', "0"), ("2-0", '{"n":2}', "1"), ("3-0", '{"n":3}', "2"),
        ], ch
        assert node.hget(f"sse:{{{ch}}}:s", "n") == "3"
        for other, client in nodes.items():  # KEYS: this node's keys, no MOVED
            want = [f"sse:{{{ch}}}:h", f"sse:{{{ch}}}:s"] if other == port else []
            assert sorted(client.keys(f"sse:{{{ch}}}:*")) == want, f"{ch} on {other}"


def test_history_options_in_a_cluster(rc, nodes):
    owners = one_channel_per_master(rc, "opts")
    port, ch = next(iter(owners.items()))
    got = [publish(rc, ch, f"e{i}", history=True, prefix="app2", maxlen=2, ttl=100, to=["u1", "u2"])
           for i in range(3)]
    assert got == [1, 2, 3], "app2 has its own sequence"
    node, key = nodes[port], f"app2:{{{ch}}}:h"
    assert node.xlen(key) == 2
    assert 0 < node.ttl(key) <= 100
    assert [(eid, f["d"], f["t"]) for eid, f in node.xrange(key)] == [
        ("2-0", "e1", "u1,u2"), ("3-0", "e2", "u1,u2"),
    ]


def test_plain_publish_reaches_a_sharded_subscriber_on_the_owning_master(rc, nodes):
    owners = one_channel_per_master(rc, "live")
    subs = {}
    try:
        for port, ch in owners.items():
            subs[ch] = nodes[port].pubsub()
            subs[ch].ssubscribe(ch)
            subscribed(subs[ch], 1)
        for ch, sub in subs.items():
            assert publish(rc, ch, {"ch": ch}) == 1, "SPUBLISH: the one subscriber of its shard"
            assert next_message(sub)["data"] == f'{{"ch":"{ch}"}}'
            publish(rc, ch, "only u1", to="u1")
            assert next_message(sub)["data"] == "\x1esse1 to=u1\nonly u1"
            event_id = publish(rc, ch, "kept", history=True)
            assert next_message(sub)["data"] == f"\x1esse1 id={event_id}\nkept"
    finally:
        for sub in subs.values():
            sub.close()


def test_sharded_false_is_a_plain_publish(rc, nodes):
    port, ch = next(iter(one_channel_per_master(rc, "fallback").items()))
    sharded, plain = nodes[port].pubsub(), nodes[port].pubsub()
    try:
        sharded.ssubscribe(ch)
        plain.subscribe(ch)
        subscribed(sharded, 1)
        subscribed(plain, 1)
        publish(rc, ch, "to SUBSCRIBE", sharded=False)
        assert next_message(plain)["data"] == "to SUBSCRIBE"
        publish(rc, ch, "to SSUBSCRIBE")
        assert next_message(sharded)["data"] == "to SSUBSCRIBE", "PUBLISH reached no sharded subscriber"
    finally:
        sharded.close()
        plain.close()


def test_load_function_loads_on_every_master(rc, nodes):
    delete_function(nodes)
    assert not any(function_loaded(node) for node in nodes.values())
    assert load_function(rc) in (FUNCTION, FUNCTION.encode())
    assert all(function_loaded(node) for node in nodes.values())
