"""nginx-sse publisher: one call to send an event to nginx-sse streams.

    import redis
    from nginx_sse import publish

    r = redis.Redis()
    publish(r, "logs:w1:nightly", {"level": "INFO", "msg": "loaded"})          # PUBLISH
    publish(r, "dashboards:7", {"v": 17}, to=["u42", "u43"])                 # only these users
    event_id = publish(r, "logs:w1:nightly", "line", history=True)          # FCALL sse_publish

    rc = redis.RedisCluster(host="10.0.0.5", port=6379)                      # Redis Cluster:
    publish(rc, "logs:w1:nightly", {"msg": "loaded"})                        # SPUBLISH
    event_id = publish(rc, "logs:w1:nightly", "line", history=True)         # FCALL sse_publish 1
"""

from .publisher import (
    MAX_NAME_LEN,
    RESERVED_PREFIX,
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

__version__ = "0.1.0"

__all__ = [
    "MAX_NAME_LEN",
    "RESERVED_PREFIX",
    "PublishArgumentError",
    "encode_data",
    "fcall_args",
    "is_cluster_client",
    "load_function",
    "plain_payload",
    "publish",
    "sse_lua",
    "validate_channel",
    "validate_prefix",
    "validate_user_id",
]
