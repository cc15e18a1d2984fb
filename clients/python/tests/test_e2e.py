"""End to end: a real redis-server and a real nginx with the module; streams
read over HTTP the way a browser's EventSource does; events published with
the library."""

import redis

from nginx_sse import publish
from servers import SSEStream, wait_until

FUNCTION = "nginx_sse"


def wait_subscribed(r, channel, n=1):
    ok = wait_until(lambda: dict(r.pubsub_numsub(channel)).get(channel.encode(), 0) >= n, 5)
    assert ok, f"nginx did not subscribe to {channel}"


def function_loaded(r):
    return bool(r.execute_command("FUNCTION", "LIST", "LIBRARYNAME", FUNCTION))


def open_stream(nginx, path, **kw):
    s = SSEStream(nginx.port, path, **kw)
    assert s.status == 200, f"GET {path}: {s.status}"
    return s


def events(stream, n):
    out = []
    for _ in range(n):
        ev = stream.next_event(5)
        assert ev is not None, f"stream ended after {out}"
        out.append(ev)
    return out


def test_plain_publish_arrives_as_published(nginx, r):
    ch = "e2e:plain"
    s = open_stream(nginx, f"/live?ch={ch}&u=u1")
    try:
        wait_subscribed(r, ch)
        assert publish(r, ch, {"level": "INFO", "msg": "loaded 12,345 rows", "n": 1}) == 1
        assert publish(r, ch, "two\nlines") == 1
        assert publish(r, ch, b"\x1e starts with a record separator") == 1
        assert publish(r, ch, "") == 1
        got = [(e["event"], e["data"], e["id"]) for e in events(s, 4)]
        assert got == [
            (ch, '{"level":"INFO","msg":"loaded 12,345 rows","n":1}', None),
            (ch, "two\nlines", None),
            (ch, "\x1e starts with a record separator", None),
            (ch, "", None),
        ]
    finally:
        s.close()


def test_plain_publish_with_an_audience_reaches_only_those_users(nginx, r):
    ch = "e2e:to"
    streams = {u: open_stream(nginx, f"/live?ch={ch}&u={u}") for u in ["u1", "u2", "org:u3"]}
    try:
        wait_subscribed(r, ch)
        publish(r, ch, "A", to=["u1", "org:u3"])
        publish(r, ch, "B", to="u2")
        publish(r, ch, {"end": True})  # everyone: ends each stream's expectations
        want = {"u1": ["A", '{"end":true}'], "u2": ["B", '{"end":true}'], "org:u3": ["A", '{"end":true}']}
        for user, s in streams.items():
            assert [e["data"] for e in events(s, 2)] == want[user], user
    finally:
        for s in streams.values():
            s.close()


def test_history_and_resume_with_last_event_id(nginx, r):
    ch = "e2e:hist"
    assert wait_until(lambda: function_loaded(r), 10), "the workers load sse.lua when they connect"
    s = open_stream(nginx, f"/history?ch={ch}&u=u1")
    try:
        wait_subscribed(r, ch)
        id1 = publish(r, ch, {"n": 1}, history=True)
        assert isinstance(id1, int) and id1 >= 1
        [e1] = events(s, 1)
        assert (e1["event"], e1["id"], e1["data"]) == (ch, str(id1), '{"n":1}')
    finally:
        s.close()

    # while the browser is away
    id2 = publish(r, ch, {"n": 2}, history=True)
    id3 = publish(r, ch, "for u1", history=True, to=["u1"])
    id4 = publish(r, ch, "for u2", history=True, to=["u2"])
    id5 = publish(r, ch, b"\x1eraw", history=True, maxlen=100, ttl=3600)
    assert id1 < id2 < id3 < id4 < id5

    s = open_stream(nginx, f"/history?ch={ch}&u=u1", headers={"Last-Event-ID": str(id1)})
    try:
        replay = [(e["id"], e["data"]) for e in events(s, 3)]
        assert replay == [(str(id2), '{"n":2}'), (str(id3), "for u1"), (str(id5), "\x1eraw")]
        wait_subscribed(r, ch)
        id6 = publish(r, ch, "live again", history=True)
        [e6] = events(s, 1)
        assert (e6["id"], e6["data"]) == (str(id6), "live again")
    finally:
        s.close()


def test_history_loads_the_function_when_redis_lacks_it(nginx, r):
    ch = "e2e:load"
    assert wait_until(lambda: function_loaded(r), 10)
    r.execute_command("FUNCTION", "DELETE", FUNCTION)
    assert not function_loaded(r)
    s = open_stream(nginx, f"/history?ch={ch}&u=u1")
    try:
        wait_subscribed(r, ch)
        event_id = publish(r, ch, {"loaded": True}, history=True)
        assert function_loaded(r), "publish loaded sse.lua"
        [e] = events(s, 1)
        assert (e["id"], e["data"]) == (str(event_id), '{"loaded":true}')
    finally:
        s.close()


def test_history_options_reach_redis(redis_server):
    r = redis.Redis(host="127.0.0.1", port=redis_server.port, decode_responses=True)
    try:
        ch = "e2e:opts"
        ids = [publish(r, ch, {"i": i}, history=True, prefix="app2", maxlen=2, ttl=100) for i in range(3)]
        assert ids == [1, 2, 3], "app2 has its own sequence"
        assert r.xlen(f"app2:h:{ch}") == 2
        assert 0 < r.ttl(f"app2:h:{ch}") <= 100
        assert r.hget("app2:last", ch) == "3"
        entries = r.xrange(f"app2:h:{ch}")
        assert [(eid, f["d"]) for eid, f in entries] == [("2-0", '{"i":1}'), ("3-0", '{"i":2}')]
        assert publish(r, ch, "plain, nobody listening") == 0
    finally:
        r.close()
