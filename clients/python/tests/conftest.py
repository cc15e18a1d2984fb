"""Fixtures of the end-to-end tests: one redis-server, one Redis Cluster
(three masters) and one nginx with the module for the whole session (each
started on first use; skipped, with the reason, when a binary is missing),
always stopped at the end."""

import pytest
import redis

from servers import (
    Nginx, RedisClusterServers, RedisServer, missing_nginx, missing_redis, missing_redis_cli,
)


@pytest.fixture(scope="session")
def redis_server():
    why = missing_redis()
    if why:
        pytest.skip(why)
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_cluster():
    why = missing_redis() or missing_redis_cli()
    if why:
        pytest.skip(why)
    servers = RedisClusterServers().start()
    try:
        yield servers
    finally:
        servers.stop()


@pytest.fixture(scope="session")
def nginx(redis_server):
    why = missing_nginx()
    if why:
        pytest.skip(why)
    server = Nginx(redis_server.port).start()
    try:
        yield server
    finally:
        server.stop()
        alerts = server.alerts()
        server.cleanup()
        assert not alerts, "nginx error.log has [alert]/[emerg] or a crashed worker:\n" + "\n".join(alerts)


@pytest.fixture
def r(redis_server):
    client = redis.Redis(host="127.0.0.1", port=redis_server.port)
    try:
        yield client
    finally:
        client.close()
