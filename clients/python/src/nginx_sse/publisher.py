"""One-call publishing to nginx-sse streams through Redis.

``publish(client, channel, data)`` is a plain ``PUBLISH`` (at most once, to
the streams open now); ``publish(..., history=True)`` is
``FCALL sse_publish`` (the Redis Function of ``redis/sse.lua``, shipped in
this package), which stores the event in the channel's history before
publishing it, so that browsers that reconnect get it. See the main README,
sections "Publishing", "Delivery guarantees" and "Securing streams".
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any, Iterable, List, Optional, Union

from redis.exceptions import ResponseError

__all__ = [
    "PublishArgumentError",
    "publish",
    "load_function",
    "sse_lua",
    "encode_data",
    "plain_payload",
    "fcall_args",
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
    ``"maxlen"``, ``"ttl"``, ``"history"``, ``"data"``), ``value`` the
    offending value and ``rule`` the rule it breaks.
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
) -> List[bytes]:
    """The arguments of ``FCALL sse_publish 0 <channel> <payload> [options]``."""
    args = [b"FCALL", b"sse_publish", b"0", channel, payload]
    if maxlen is not None:
        args.append(b"maxlen=%d" % maxlen)
    if ttl is not None:
        args.append(b"ttl=%d" % ttl)
    if audience is not None:
        args.append(b"to=" + audience)
    if prefix is not None:
        args.append(b"prefix=" + prefix)
    return args


def sse_lua() -> str:
    """The source of the ``sse_publish`` Redis Function shipped in this
    package (a build-time copy of the repository's redis/sse.lua)."""
    return resources.files(__package__).joinpath("sse.lua").read_text(encoding="utf-8")


def load_function(client: Any) -> Any:
    """``FUNCTION LOAD REPLACE`` of the packaged sse.lua (what nginx workers
    with ``sse_history on`` do when they connect). Returns the library name."""
    return client.execute_command("FUNCTION", "LOAD", "REPLACE", sse_lua())


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

    Raises :class:`PublishArgumentError` (a ``ValueError``) before sending
    anything when an argument breaks nginx-sse's rules; Redis errors (from
    redis-py) propagate.
    """
    channel_b = validate_channel(channel)
    if not isinstance(history, bool):
        raise PublishArgumentError("history", history, "must be True or False")
    audience = _audience(to) if to is not None else None

    if not history:
        for field, value in (("maxlen", maxlen), ("ttl", ttl), ("prefix", prefix)):
            if value is not None:
                raise PublishArgumentError(
                    field, value, "only applies with history=True (a plain PUBLISH keeps no history)"
                )
        payload = plain_payload(encode_data(data), audience)
        return int(client.execute_command("PUBLISH", channel_b, payload))

    args = fcall_args(
        channel_b,
        encode_data(data),
        audience=audience,
        maxlen=_check_int("maxlen", maxlen, 1) if maxlen is not None else None,
        ttl=_check_int("ttl", ttl, 0) if ttl is not None else None,
        prefix=validate_prefix(prefix) if prefix is not None else None,
    )
    try:
        return int(client.execute_command(*args))
    except ResponseError as e:
        if not _function_missing(e):
            raise
    load_function(client)
    return int(client.execute_command(*args))
