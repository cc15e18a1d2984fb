"""Unit tests: validation, payload bytes, options, JSON encoding and the
function-loading retry, against a fake client that records commands."""

import pytest
from redis.cluster import RedisCluster
from redis.exceptions import ResponseError

from nginx_sse import (
    PublishArgumentError,
    encode_data,
    fcall_args,
    is_cluster_client,
    load_function,
    plain_payload,
    publish,
    sse_lua,
    validate_channel,
    validate_prefix,
    validate_user_id,
)


class FakeClient:
    """Records execute_command calls; answers from a list of replies (an
    exception instance is raised)."""

    def __init__(self, *replies):
        self.replies = list(replies)
        self.calls = []

    def execute_command(self, *args):
        self.calls.append(args)
        reply = self.replies.pop(0) if self.replies else 1
        if isinstance(reply, Exception):
            raise reply
        return reply


class FakeCluster(RedisCluster):
    """A RedisCluster (as publish detects it) that records execute_command
    calls with their keyword arguments instead of reaching a cluster."""

    def __init__(self, *replies):  # no super().__init__: no nodes to discover
        self.replies = list(replies)
        self.calls = []

    def execute_command(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        reply = self.replies.pop(0) if self.replies else 1
        if isinstance(reply, Exception):
            raise reply
        return reply

    def close(self):
        pass


# -- names ------------------------------------------------------------------

GOOD_NAMES = ["a", "logs:w1:nightly-sales", "u42", "org:u42", "A.b_c-d@e", "x" * 128, "0:1:2"]
BAD_NAMES = [
    ("", "empty"),
    ("x" * 129, "129 bytes, longer than 128"),
    ("a b", "contains byte 0x20"),
    ("a,b", "contains ','"),
    ("dash*", "contains '*'"),
    ("é", "contains byte 0xc3"),
    ("a\nb", "contains byte 0x0a"),
    (":a", "empty ':' segment"),
    ("a:", "empty ':' segment"),
    ("a::b", "empty ':' segment"),
    (":", "empty ':' segment"),
]


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_valid_names(name):
    assert validate_channel(name) == name.encode()
    assert validate_user_id(name) == name.encode()
    assert validate_prefix(name) == name.encode()


@pytest.mark.parametrize("name,why", BAD_NAMES)
def test_invalid_channel_names_the_value_and_the_rule(name, why):
    with pytest.raises(PublishArgumentError) as e:
        validate_channel(name)
    msg = str(e.value)
    assert why in msg
    assert repr(name) in msg
    assert "1 to 128 bytes of A-Z a-z 0-9 _ - . @" in msg
    assert e.value.field == "channel" and e.value.value == name
    assert isinstance(e.value, ValueError)


@pytest.mark.parametrize("name,why", BAD_NAMES)
def test_invalid_user_ids_and_prefixes(name, why):
    with pytest.raises(PublishArgumentError, match="invalid user id") as e:
        validate_user_id(name)
    assert why in str(e.value) and e.value.field == "to"
    with pytest.raises(PublishArgumentError, match="sse_redis_prefix") as e:
        validate_prefix(name)
    assert why in str(e.value) and e.value.field == "prefix"


def test_reserved_channels():
    for name in ["sse:control", "sse:x:y"]:
        with pytest.raises(PublishArgumentError, match='starting with "sse:" are reserved'):
            validate_channel(name)
    # "sse" alone, or "sse" as a later segment, is an ordinary name
    assert validate_channel("sse") == b"sse"
    assert validate_channel("app:sse:x") == b"app:sse:x"


def test_names_must_be_strings():
    with pytest.raises(PublishArgumentError, match="must be a str"):
        validate_channel(42)
    assert validate_channel(b"logs:x") == b"logs:x"


def test_nothing_is_sent_when_an_argument_is_invalid():
    c = FakeClient()
    for kwargs in [
        dict(channel="a b"),
        dict(channel="sse:control"),
        dict(channel="ok", to=["u1", "u2:"]),
        dict(channel="ok", to=[]),
        dict(channel="ok", to="u1,u2"),
        dict(channel="ok", history=True, prefix="a::b"),
        dict(channel="ok", history=True, maxlen=0),
        dict(channel="ok", history=True, ttl=-1),
        dict(channel="ok", maxlen=10),
        dict(channel="ok", data=object()),
    ]:
        kwargs.setdefault("data", "x")
        channel, data = kwargs.pop("channel"), kwargs.pop("data")
        with pytest.raises(PublishArgumentError):
            publish(c, channel, data, **kwargs)
    assert c.calls == []


# -- payloads ---------------------------------------------------------------


def test_data_encoding():
    assert encode_data(b"\x00\xff") == b"\x00\xff"
    assert encode_data(bytearray(b"ab")) == b"ab"
    assert encode_data("héllo") == "héllo".encode()
    assert encode_data({"level": "INFO", "n": 1}) == b'{"level":"INFO","n":1}'
    assert encode_data([1, "é", None, True]) == '[1,"é",null,true]'.encode()
    assert encode_data(None) == b"null"
    assert encode_data(17) == b"17"
    with pytest.raises(PublishArgumentError, match="cannot be JSON-encoded") as e:
        encode_data({"x": {1, 2}})
    assert e.value.field == "data"
    with pytest.raises(PublishArgumentError, match="cannot be JSON-encoded"):
        encode_data(float("nan"))


def test_plain_payload_bytes():
    assert plain_payload(b"hello") == b"hello"
    assert plain_payload(b"") == b""
    assert plain_payload(b"hello", b"u1,u2") == b"\x1esse1 to=u1,u2\nhello"
    assert plain_payload(b"\x1esse1 to=u9\nx") == b"\x1esse1\n\x1esse1 to=u9\nx"
    assert plain_payload(b"\x1e", b"u1") == b"\x1esse1 to=u1\n\x1e"
    assert plain_payload(b"a\x1e") == b"a\x1e"


# -- publish ----------------------------------------------------------------


def test_plain_publish():
    c = FakeClient(3)
    assert publish(c, "logs:w1:f", {"a": 1}) == 3
    assert c.calls == [("PUBLISH", b"logs:w1:f", b'{"a":1}')]


def test_plain_publish_with_audience():
    c = FakeClient(1, 1)
    publish(c, "dashboards:7", "x", to=["u42", "org:u43"])
    publish(c, "dashboards:7", "y", to="u42")
    assert c.calls == [
        ("PUBLISH", b"dashboards:7", b"\x1esse1 to=u42,org:u43\nx"),
        ("PUBLISH", b"dashboards:7", b"\x1esse1 to=u42\ny"),
    ]
    c = FakeClient(1)
    publish(c, "dashboards:7", "z", to=(u for u in ["a", "b"]))
    assert c.calls[0][2] == b"\x1esse1 to=a,b\nz"


def test_plain_publish_wraps_a_payload_starting_with_0x1e():
    c = FakeClient(1)
    publish(c, "raw", b"\x1e not an envelope")
    assert c.calls == [("PUBLISH", b"raw", b"\x1esse1\n\x1e not an envelope")]


@pytest.mark.parametrize("option", ["maxlen", "ttl", "prefix"])
def test_history_options_without_history_are_an_error(option):
    value = "app" if option == "prefix" else 5
    with pytest.raises(PublishArgumentError, match="only applies with history=True") as e:
        publish(FakeClient(), "ch", "x", **{option: value})
    assert e.value.field == option


def test_history_must_be_a_bool():
    with pytest.raises(PublishArgumentError, match="True or False"):
        publish(FakeClient(), "ch", "x", history="yes")


def test_fcall_arguments():
    c = FakeClient(41, 42)
    assert publish(c, "logs:w1:f", {"a": 1}, history=True) == 41
    assert publish(
        c, "dashboards:7", b"\x1eraw", history=True, maxlen=100, ttl=0, to=["u42", "u43"], prefix="app2"
    ) == 42
    assert c.calls == [
        ("FCALL", "sse_publish", "0", b"logs:w1:f", b'{"a":1}'),
        # the function writes the envelope itself: a payload starting with 0x1E is not wrapped
        ("FCALL", "sse_publish", "0", b"dashboards:7", b"\x1eraw",
         b"maxlen=100", b"ttl=0", b"to=u42,u43", b"prefix=app2"),
    ]


@pytest.mark.parametrize("field,value", [("maxlen", 0), ("maxlen", 1.5), ("maxlen", True),
                                         ("maxlen", "10"), ("ttl", -1), ("ttl", 2.0)])
def test_bad_numbers(field, value):
    with pytest.raises(PublishArgumentError, match="integer") as e:
        publish(FakeClient(), "ch", "x", history=True, **{field: value})
    assert e.value.field == field and e.value.value == value


def test_missing_function_is_loaded_once_then_retried():
    c = FakeClient(ResponseError("Function not found"), "nginx_sse", 7)
    assert publish(c, "ch", "x", history=True) == 7
    assert [call[:3] for call in c.calls] == [
        ("FCALL", "sse_publish", "0"),
        ("FUNCTION", "LOAD", "REPLACE"),
        ("FCALL", "sse_publish", "0"),
    ]
    assert c.calls[1][3] == sse_lua()


def test_function_still_missing_after_loading_is_raised():
    c = FakeClient(ResponseError("Function not found"), "nginx_sse", ResponseError("Function not found"))
    with pytest.raises(ResponseError, match="Function not found"):
        publish(c, "ch", "x", history=True)
    assert len(c.calls) == 3


def test_other_redis_errors_are_not_retried():
    c = FakeClient(ResponseError('bad option "to=x"'))
    with pytest.raises(ResponseError, match="bad option"):
        publish(c, "ch", "x", history=True)
    assert len(c.calls) == 1


# -- Redis Cluster ----------------------------------------------------------


def test_fcall_args_in_cluster_mode_declare_the_channel_state_as_the_key():
    assert fcall_args(b"ch", b"x") == ["FCALL", "sse_publish", "0", b"ch", b"x"]
    assert fcall_args(b"ch", b"x", cluster=True) == ["FCALL", "sse_publish", "1", b"sse:{ch}:s", b"x"]
    assert fcall_args(b"ch", b"x", cluster=True, maxlen=5, ttl=7, audience=b"u1", prefix=b"p") == [
        "FCALL", "sse_publish", "1", b"p:{ch}:s", b"x", b"maxlen=5", b"ttl=7", b"to=u1",
    ]


def test_a_redis_cluster_client_is_detected():
    assert is_cluster_client(FakeCluster())
    assert not is_cluster_client(FakeClient())


def test_cluster_client_plain_publish_is_spublish_unless_asked_otherwise():
    c = FakeCluster(2, 1, 5)
    assert publish(c, "logs:w1:f", {"a": 1}) == 2
    assert publish(c, "dashboards:7", "x", to=["u42"]) == 1
    assert publish(c, "logs:w1:f", "y", sharded=False) == 5
    assert c.calls == [
        (("SPUBLISH", b"logs:w1:f", b'{"a":1}'), {}),
        (("SPUBLISH", b"dashboards:7", b"\x1esse1 to=u42\nx"), {}),
        (("PUBLISH", b"logs:w1:f", b"y"), {}),
    ]


def test_cluster_client_history_is_fcall_with_one_key():
    c = FakeCluster(1, 2)
    assert publish(c, "logs:w1:f", {"a": 1}, history=True) == 1
    assert publish(c, "dashboards:7", "x", history=True, maxlen=10, ttl=60, to="u42", prefix="app2") == 2
    assert c.calls == [
        (("FCALL", "sse_publish", "1", b"sse:{logs:w1:f}:s", b'{"a":1}'), {}),
        (("FCALL", "sse_publish", "1", b"app2:{dashboards:7}:s", b"x",
          b"maxlen=10", b"ttl=60", b"to=u42"), {}),
    ]


def test_cluster_mode_on_another_client_sends_the_cluster_commands_through_it():
    c = FakeClient(1, 1, 3)
    publish(c, "ch", "a", cluster=True)
    publish(c, "ch", "b", cluster=True, sharded=False)
    assert publish(c, "ch", "c", cluster=True, history=True) == 3
    assert c.calls == [
        ("SPUBLISH", b"ch", b"a"),
        ("PUBLISH", b"ch", b"b"),
        ("FCALL", "sse_publish", "1", b"sse:{ch}:s", b"c"),
    ]


def test_cluster_and_sharded_misuse_is_refused_before_sending():
    cases = [
        (FakeCluster(), dict(cluster=False), "cluster", "always in cluster mode"),
        (FakeClient(), dict(cluster="yes"), "cluster", "True, False or None"),
        (FakeClient(), dict(sharded=True), "sharded", "only in a Redis Cluster"),
        (FakeClient(), dict(sharded=1, cluster=True), "sharded", "True, False or None"),
        (FakeCluster(), dict(sharded=True, history=True), "sharded", "only applies without history"),
        (FakeCluster(), dict(sharded=False, history=True), "sharded", "only applies without history"),
    ]
    for client, kwargs, field, why in cases:
        with pytest.raises(PublishArgumentError, match=why) as e:
            publish(client, "ch", "x", **kwargs)
        assert e.value.field == field, kwargs
        assert client.calls == []


def test_load_function_on_a_cluster_targets_every_primary():
    c = FakeCluster({"127.0.0.1:7001": "nginx_sse", "127.0.0.1:7002": "nginx_sse"})
    assert load_function(c) == "nginx_sse"
    [(args, kwargs)] = c.calls
    assert args == ("FUNCTION", "LOAD", "REPLACE", sse_lua())
    assert kwargs == {"target_nodes": RedisCluster.PRIMARIES}
    # one master: redis-py answers with the value itself
    assert load_function(FakeCluster(b"nginx_sse")) == b"nginx_sse"


def test_cluster_missing_function_is_loaded_on_every_primary_then_retried():
    c = FakeCluster(ResponseError("Function not found"), {"n1": "nginx_sse", "n2": "nginx_sse"}, 1)
    assert publish(c, "ch", "x", history=True) == 1
    assert [(args[:3], kwargs) for args, kwargs in c.calls] == [
        (("FCALL", "sse_publish", "1"), {}),
        (("FUNCTION", "LOAD", "REPLACE"), {"target_nodes": RedisCluster.PRIMARIES}),
        (("FCALL", "sse_publish", "1"), {}),
    ]
