"""One-call publishing to nginx-sse streams through Redis.

``publish(client, channel, data)`` is a plain ``PUBLISH`` (at most once, to
the streams open now); ``publish(..., history=True)`` is
``FCALL sse_publish`` (the Redis Function of ``redis/sse.lua``, shipped in
this package), which stores the event in the channel's history before
publishing it, so that browsers that reconnect get it. See the main README,
sections "Publishing", "Delivery guarantees" and "Securing streams".

In a Redis Cluster (a ``redis.cluster.RedisCluster`` client, or
``cluster=True``) the same calls are ``SPUBLISH`` and
``FCALL sse_publish 1 <prefix>:{<channel>}:s ...`` (the channel's state is the key, so the cluster
client sends them to the master that serves the channel's slot): README,
"Redis Cluster".
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any, Iterable, List, Optional, Tuple, Union

from redis.exceptions import ResponseError

try:
    from redis.cluster import RedisCluster

    _CLUSTER_CLIENTS: Tuple[type, ...] = (RedisCluster,)
except ImportError:  # redis-py 4.0 has no cluster client
    _CLUSTER_CLIENTS = ()

__all__ = [
    "PublishArgumentError",
    "publish",
    "load_function",
    "sse_lua",
    "encode_data",
    "plain_payload",
    "fcall_args",
    "is_cluster_client",
    "validate_channel",
    "validate_user_id",
    "validate_prefix",
    "MAX_NAME_LEN",
    "RESERVED_PREFIX",
]

#: Longest channel name, user id or prefix, in bytes (crates/sse-core/src/channel.rs).
MAX_NAME_LEN = 128
#: Channels starting with this are the module's own (``sse:control``).
RESERVED_PREFIX = "sse:"
#: The first byte of an audience envelope (ASCII record separator).
ENVELOPE_BYTE = 0x1E
#: The Redis Function library that redis/sse.lua registers.
FUNCTION_LIBRARY = "nginx_sse"

NAME_RULE = (
    "a name is 1 to 128 bytes of A-Z a-z 0-9 _ - . @ in non-empty segments separated by ':'"
)

# The bytes a name may hold, ':' included (between segments). The same rules
# as the module's ChannelName::parse (crates/sse-core/src/channel.rs), used
# for channels, user ids (envelope.rs valid_user) and sse_redis_prefix values
# (src/config.rs set_prefix).
_NAME_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.@:")


class PublishArgumentError(ValueError):
    """An argument of :func:`publish` that nginx-sse or ``sse_publish`` would
    refuse (or silently drop). Raised before anything is sent to Redis.

    ``field`` is the argument (``"channel"``, ``"to"``, ``"prefix"``,
    ``"maxlen"``, ``"ttl"``, ``"history"``, ``"cluster"``, ``"sharded"``,
    ``"data"``), ``value`` the offending value and ``rule`` the rule it
    breaks.
    """

    def __init__(self, field: str, value: Any, rule: str) -> None:
        self.field = field
        self.value = value
        self.rule = rule
        super().__init__(f"{field} {value!r}: {rule}")


def _name_problem(raw: bytes) -> Optional[str]:
    """Why ``raw`` is not a valid name, or None."""
    if not raw:
        return "empty; " + NAME_RULE
    if len(raw) > MAX_NAME_LEN:
        return f"{len(raw)} bytes, longer than {MAX_NAME_LEN}; " + NAME_RULE
    for b in raw:
        if b not in _NAME_BYTES:
            shown = repr(chr(b)) if 0x21 <= b < 0x7F else f"byte 0x{b:02x}"
            return f"contains {shown}; " + NAME_RULE
    if b"" in raw.split(b":"):
        return "has an empty ':' segment; " + NAME_RULE
    return None


def _as_bytes(field: str, value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    raise PublishArgumentError(field, value, f"must be a str, not {type(value).__name__}")


def validate_channel(channel: Union[str, bytes]) -> bytes:
    """Returns the channel as bytes, or raises :class:`PublishArgumentError`."""
    raw = _as_bytes("channel", channel)
    problem = _name_problem(raw)
    if problem:
        raise PublishArgumentError("channel", channel, problem)
    if raw.startswith(RESERVED_PREFIX.encode()):
        raise PublishArgumentError(
            "channel", channel, 'names starting with "sse:" are reserved for nginx-sse itself'
        )
    return raw


def validate_user_id(user: Union[str, bytes]) -> bytes:
    """Returns the user id as bytes, or raises :class:`PublishArgumentError`."""
    raw = _as_bytes("to", user)
    problem = _name_problem(raw)
    if problem:
        raise PublishArgumentError(
            "to", user, "invalid user id: " + problem.replace("a name is", "a user id is")
        )
    return raw


def validate_prefix(prefix: Union[str, bytes]) -> bytes:
    """Returns the history prefix as bytes, or raises :class:`PublishArgumentError`."""
    raw = _as_bytes("prefix", prefix)
    problem = _name_problem(raw)
    if problem:
        raise PublishArgumentError(
            "prefix", prefix, problem + " (the rules of sse_redis_prefix)"
        )
    return raw


def _audience(to: Union[str, bytes, Iterable[Union[str, bytes]]]) -> bytes:
    """The ``to=`` list: one user id (a str) or an iterable of them."""
    users: List[Union[str, bytes]]
    if isinstance(to, (str, bytes, bytearray)):
        users = [to]
    else:
        try:
            users = list(to)
        except TypeError:
            raise PublishArgumentError(
                "to", to, "must be a user id or an iterable of user ids"
            ) from None
    if not users:
        raise PublishArgumentError(
            "to", to, "an empty audience reaches nobody; leave `to` out to reach every subscriber"
        )
    return b",".join(validate_user_id(u) for u in users)


def encode_data(data: Any) -> bytes:
    """The payload: bytes as they are, str as UTF-8, anything else as compact
    JSON (UTF-8, the same bytes as JavaScript's JSON.stringify for the usual
    values)."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    if isinstance(data, str):
        return data.encode("utf-8")
    try:
        text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise PublishArgumentError("data", data, f"cannot be JSON-encoded ({e})") from None
    return text.encode("utf-8")


def plain_payload(payload: bytes, audience: Optional[bytes] = None) -> bytes:
    """What a plain ``PUBLISH`` sends: the audience envelope when there is an
    audience, an empty envelope around a payload that starts with 0x1E (else
    nginx-sse would read it as an envelope), the payload itself otherwise."""
    if audience is not None:
        return b"\x1esse1 to=" + audience + b"\n" + payload
    if payload[:1] == b"\x1e":
        return b"\x1esse1\n" + payload
    return payload


def _check_int(field: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise PublishArgumentError(field, value, f"must be an integer >= {minimum}")
    return value


def fcall_args(
    channel: bytes,
    payload: bytes,
    *,
    audience: Optional[bytes] = None,
    maxlen: Optional[int] = None,
    ttl: Optional[int] = None,
    prefix: Optional[bytes] = None,
    cluster: bool = False,
) -> List[Union[str, bytes]]:
    """The arguments of ``FCALL sse_publish 0 <channel> <payload> [options]``,
    or with ``cluster`` of ``FCALL sse_publish 1 <prefix>:{<channel>}:s
    <payload> [options]``: the call's one key is the channel's state (its
    per-channel sequence), which shares the channel's slot, so the cluster
    runs the call on the node serving it, also while the slot migrates; the
    prefix is part of that key. The command words are str: redis-py's cluster
    client routes only those."""
    if cluster:
        key = (prefix if prefix is not None else b"sse") + b":{" + channel + b"}:s"
        args: List[Union[str, bytes]] = ["FCALL", "sse_publish", "1", key, payload]
    else:
        args = ["FCALL", "sse_publish", "0", channel, payload]
    if maxlen is not None:
        args.append(b"maxlen=%d" % maxlen)
    if ttl is not None:
        args.append(b"ttl=%d" % ttl)
    if audience is not None:
        args.append(b"to=" + audience)
    if prefix is not None and not cluster:
        args.append(b"prefix=" + prefix)
    return args


def sse_lua() -> str:
    """The source of the ``sse_publish`` Redis Function shipped in this
    package (a build-time copy of the repository's redis/sse.lua)."""
    return resources.files(__package__).joinpath("sse.lua").read_text(encoding="utf-8")


def is_cluster_client(client: Any) -> bool:
    """Whether ``client`` is redis-py's cluster client
    (``redis.cluster.RedisCluster``), which :func:`publish` uses in cluster
    mode unless told otherwise."""
    return isinstance(client, _CLUSTER_CLIENTS)


def load_function(client: Any) -> Any:
    """``FUNCTION LOAD REPLACE`` of the packaged sse.lua (what nginx workers
    with ``sse_history on`` do when they connect). With a ``RedisCluster``,
    on every primary (a function lives on each node, and each channel's calls
    run on the master of its slot). Returns the library name."""
    if not is_cluster_client(client):
        return client.execute_command("FUNCTION", "LOAD", "REPLACE", sse_lua())
    # A dict {node name: library name}, or the one answer of a one-master cluster.
    reply = client.execute_command(
        "FUNCTION", "LOAD", "REPLACE", sse_lua(), target_nodes=client.PRIMARIES
    )
    return next(iter(reply.values())) if isinstance(reply, dict) else reply


def _cluster_mode(client: Any, cluster: Optional[bool]) -> bool:
    """``cluster`` as given, else whether the client is a cluster client."""
    detected = is_cluster_client(client)
    if cluster is None:
        return detected
    if not isinstance(cluster, bool):
        raise PublishArgumentError(
            "cluster", cluster, "must be True, False or None (None: detected from the client)"
        )
    if detected and not cluster:
        raise PublishArgumentError(
            "cluster", cluster,
            "a RedisCluster client is always in cluster mode "
            "(for a plain PUBLISH, pass sharded=False)",
        )
    return cluster


def _plain_command(sharded: Optional[bool], cluster: bool) -> str:
    """SPUBLISH (sharded pub/sub, what nginx subscribes with in a cluster) or
    PUBLISH: ``sharded`` as given, else SPUBLISH in cluster mode only."""
    if sharded is None:
        sharded = cluster
    elif not isinstance(sharded, bool):
        raise PublishArgumentError(
            "sharded", sharded, "must be True, False or None (None: SPUBLISH in cluster mode)"
        )
    elif sharded and not cluster:
        raise PublishArgumentError(
            "sharded", sharded,
            "SPUBLISH reaches nginx only in a Redis Cluster (a redis-cluster:// sse_redis_url): "
            "use a RedisCluster client or cluster=True",
        )
    return "SPUBLISH" if sharded else "PUBLISH"


def _function_missing(error: Exception) -> bool:
    # Redis 7: "ERR Function not found" (redis-py drops the "ERR ").
    return "function not found" in str(error).lower()


def publish(
    client: Any,
    channel: Union[str, bytes],
    data: Any,
    *,
    to: Union[str, bytes, Iterable[Union[str, bytes]], None] = None,
    history: bool = False,
    maxlen: Optional[int] = None,
    ttl: Optional[int] = None,
    prefix: Optional[Union[str, bytes]] = None,
    cluster: Optional[bool] = None,
    sharded: Optional[bool] = None,
) -> int:
    """Publishes ``data`` on ``channel`` for nginx-sse, with one Redis command.

    - ``data``: bytes and str are sent as they are (str as UTF-8); anything
      else is JSON-encoded.
    - ``to``: a user id or a list of user ids; only streams whose
      ``sse_user`` is one of them receive the event.
    - ``history=True``: ``FCALL sse_publish`` (stored in the channel's
      history, then published); returns the event id. Loads the packaged
      function first if Redis does not have it. ``maxlen`` (entries kept,
      default 1000), ``ttl`` (seconds an idle channel's history lives,
      default 86400, 0 = forever) and ``prefix`` (``sse_redis_prefix``,
      default ``sse``) only exist with history.
    - otherwise a plain ``PUBLISH``; returns the number of receivers (nginx
      workers subscribed to the channel, not browsers).
    - ``cluster``: Redis Cluster mode; by default, whether ``client`` is a
      ``redis.cluster.RedisCluster``. ``True`` with another client (one that
      reaches a cluster through a proxy, or one node that serves every slot)
      sends the cluster commands through it. In cluster mode history is
      ``FCALL sse_publish 1 <prefix>:{<channel>}:s ...`` (a per-channel sequence) and a
      plain publish is ``SPUBLISH``; ``sharded=False`` makes it a ``PUBLISH``.

    Raises :class:`PublishArgumentError` (a ``ValueError``) before sending
    anything when an argument breaks nginx-sse's rules; Redis errors (from
    redis-py) propagate.
    """
    channel_b = validate_channel(channel)
    if not isinstance(history, bool):
        raise PublishArgumentError("history", history, "must be True or False")
    in_cluster = _cluster_mode(client, cluster)
    audience = _audience(to) if to is not None else None

    if not history:
        for field, value in (("maxlen", maxlen), ("ttl", ttl), ("prefix", prefix)):
            if value is not None:
                raise PublishArgumentError(
                    field, value, "only applies with history=True (a plain PUBLISH keeps no history)"
                )
        command = _plain_command(sharded, in_cluster)
        payload = plain_payload(encode_data(data), audience)
        return int(client.execute_command(command, channel_b, payload))

    if sharded is not None:
        raise PublishArgumentError(
            "sharded", sharded,
            "only applies without history (sse_publish itself publishes with SPUBLISH in cluster "
            "mode, PUBLISH otherwise)",
        )

    args = fcall_args(
        channel_b,
        encode_data(data),
        audience=audience,
        maxlen=_check_int("maxlen", maxlen, 1) if maxlen is not None else None,
        ttl=_check_int("ttl", ttl, 0) if ttl is not None else None,
        prefix=validate_prefix(prefix) if prefix is not None else None,
        cluster=in_cluster,
    )
    try:
        return int(client.execute_command(*args))
    except ResponseError as e:
        if not _function_missing(e):
            raise
    load_function(client)
    return int(client.execute_command(*args))
