"""The package ships redis/sse.lua, the one copy in git of the sse_publish
Redis Function: the copy the build put into the package must be that file,
byte for byte. If this fails, build again (`bash test.sh` reinstalls when
redis/sse.lua changed; by hand: `pip install -e clients/python`)."""

from pathlib import Path

from nginx_sse import sse_lua

REPO_LUA = Path(__file__).resolve().parents[3] / "redis" / "sse.lua"


def test_packaged_sse_lua_is_redis_sse_lua():
    assert REPO_LUA.is_file(), f"{REPO_LUA} not found"
    packaged = sse_lua()
    assert packaged == REPO_LUA.read_text(encoding="utf-8"), (
        "the sse.lua packaged in nginx_sse differs from redis/sse.lua: build the package again"
    )


def test_packaged_function_registers_sse_publish():
    text = sse_lua()
    assert text.startswith("#!lua name=nginx_sse")
    assert "redis.register_function('sse_publish'" in text
