"""A real redis-server, a real Redis Cluster (three masters) and a real nginx
with the nginx-sse module, on free loopback ports in temporary directories
(like t/lib/SSETest.pm), and a minimal Server-Sent Events reader over
http.client.

Each process runs in its own process group and is stopped (SIGTERM, then
SIGKILL) by stop(); the fixtures in conftest.py call it whatever happens.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

REPO = Path(__file__).resolve().parents[3]
NGINX_BIN = os.environ.get("NGINX_BIN", "/usr/sbin/nginx")
SSE_MODULE = os.path.abspath(
    os.environ.get("SSE_MODULE", str(REPO / "target/release/libngx_http_sse_module.so"))
)
REDIS_BIN = os.environ.get("REDIS_BIN", "redis-server")
REDIS_CLI = os.environ.get("REDIS_CLI", "redis-cli")
KEEP = bool(os.environ.get("TEST_KEEP"))


def missing_redis() -> Optional[str]:
    if not shutil.which(REDIS_BIN):
        return f"redis-server not found ({REDIS_BIN}; set REDIS_BIN)"
    return None


def missing_redis_cli() -> Optional[str]:
    if not shutil.which(REDIS_CLI):
        return f"redis-cli not found ({REDIS_CLI}; set REDIS_CLI)"
    return None


def missing_nginx() -> Optional[str]:
    if not os.path.isfile(SSE_MODULE):
        return f"nginx module not built: {SSE_MODULE} does not exist (run 'make build' or set SSE_MODULE)"
    if not os.access(NGINX_BIN, os.X_OK):
        return f"nginx binary {NGINX_BIN} is not executable (set NGINX_BIN)"
    return None


_given = set()


def free_port() -> int:
    """A loopback port that was free a moment ago, never handed out twice."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _given:
            _given.add(port)
            return port
    raise RuntimeError("no free loopback port")


def wait_until(cond: Callable[[], object], timeout: float, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        try:
            v = cond()
        except Exception:
            v = None
        if v:
            return v
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


def temp_dir(what: str) -> str:
    d = tempfile.mkdtemp(prefix=f"nginx-sse-py-{what}-")
    os.chmod(d, 0o755)  # nginx workers run as "nobody" when the master is root
    return d


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def slurp(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


class Process:
    """A child in its own process group, stdout+stderr to a log file."""

    def __init__(self, argv: List[str], log: str) -> None:
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.returncode is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        try:  # stragglers of the group (nginx workers)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(5)


class RedisServer:
    def __init__(self, *extra_args: str) -> None:
        self.dir = temp_dir("redis")
        self.port = free_port()
        self.extra_args = list(extra_args)
        self.process: Optional[Process] = None

    def start(self) -> "RedisServer":
        self.process = Process(
            [REDIS_BIN, "--port", str(self.port), "--bind", "127.0.0.1", "--daemonize", "no",
             "--save", "", "--appendonly", "no", "--dir", self.dir,
             "--logfile", os.path.join(self.dir, "redis.log"), *self.extra_args],
            os.path.join(self.dir, "redis.out"),
        )

        def up():
            if not self.process.running():
                raise RuntimeError("redis-server exited")
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")

        if not wait_until(up, 10) or not self.process.running():
            why = slurp(os.path.join(self.dir, "redis.log")) + slurp(os.path.join(self.dir, "redis.out"))
            self.stop()  # removes the directory
            raise RuntimeError(f"redis-server did not start:\n{why}")
        return self

    def stop(self) -> None:
        if self.process:
            self.process.stop()
            self.process = None
        if not KEEP:
            shutil.rmtree(self.dir, ignore_errors=True)


class RedisClusterServers:
    """A Redis Cluster of three masters (no replicas): three cluster-enabled
    redis-servers joined by `redis-cli --cluster create`. start() stops the
    nodes it started when the cluster does not come up."""

    def __init__(self, masters: int = 3) -> None:
        # The bus port is set: the default, port + 10000, may be taken or beyond 65535.
        self.nodes = [RedisServer("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                                  "--cluster-port", str(free_port()))
                      for _ in range(masters)]

    @property
    def ports(self) -> List[int]:
        return [n.port for n in self.nodes]

    def start(self) -> "RedisClusterServers":
        try:
            for node in self.nodes:
                node.start()
            create = subprocess.run(
                [REDIS_CLI, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                 "--cluster-replicas", "0"],
                input=b"yes\n", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30,
            )
            if create.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed:\n{create.stdout.decode()}")
            if not wait_until(lambda: all(self.state_ok(p) for p in self.ports), 15, 0.1):
                raise RuntimeError("the cluster did not reach cluster_state:ok")
        except BaseException:
            self.stop()
            raise
        return self

    @staticmethod
    def state_ok(port: int) -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"CLUSTER INFO\r\n")
            return b"cluster_state:ok" in s.recv(4096)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def nginx_conf(prefix: str, port: int, redis_port: int) -> str:
    return f"""load_module {SSE_MODULE};
daemon off;
master_process on;
worker_processes 1;
error_log {prefix}/error.log info;
pid {prefix}/nginx.pid;

events {{
    worker_connections 256;
}}

http {{
    access_log off;
    client_body_temp_path {prefix}/client_body_temp;
    proxy_temp_path {prefix}/proxy_temp;
    fastcgi_temp_path {prefix}/fastcgi_temp;
    uwsgi_temp_path {prefix}/uwsgi_temp;
    scgi_temp_path {prefix}/scgi_temp;
    sse_redis_url redis://127.0.0.1:{redis_port};

    server {{
        listen 127.0.0.1:{port};
        server_name localhost;

        # the user comes from the query here: a test stand-in for auth_request
        location = /live    {{ sse_channel $arg_ch; sse_user $arg_u; }}
        location = /history {{ sse_channel $arg_ch; sse_user $arg_u; sse_history on; }}
    }}
}}
"""


class Nginx:
    """nginx -p PREFIX/ -c PREFIX/nginx.conf (daemon off: our child)."""

    def __init__(self, redis_port: int) -> None:
        self.prefix = temp_dir("nginx")
        self.port = free_port()
        self.conf = os.path.join(self.prefix, "nginx.conf")
        with open(self.conf, "w") as f:
            f.write(nginx_conf(self.prefix, self.port, redis_port))
        self.process: Optional[Process] = None
        self.checked = 0

    @property
    def error_log(self) -> str:
        return slurp(os.path.join(self.prefix, "error.log"))

    def start(self) -> "Nginx":
        self.process = Process([NGINX_BIN, "-p", self.prefix + "/", "-c", self.conf],
                               os.path.join(self.prefix, "stderr.log"))

        def up():
            if not self.process.running():
                raise RuntimeError("nginx exited")
            return port_open(self.port)

        if not wait_until(up, 10) or not self.process.running():
            why = slurp(os.path.join(self.prefix, "stderr.log")) + self.error_log
            self.stop()
            raise RuntimeError(f"nginx did not start:\n{why}")
        return self

    def alerts(self) -> List[str]:
        """[alert]/[emerg] lines or crashed workers in error.log (none, ever)."""
        return [l for l in self.error_log.splitlines()
                if "[alert]" in l or "[emerg]" in l or "exited on signal" in l]

    def stop(self) -> None:
        if self.process:
            self.process.stop()
            self.process = None

    def cleanup(self) -> None:
        if not KEEP:
            shutil.rmtree(self.prefix, ignore_errors=True)


class SSEStream:
    """One event stream (GET with Accept: text/event-stream), read the way an
    EventSource does: events as {"event", "data", "id"}."""

    def __init__(self, port: int, path: str, headers: Optional[Dict[str, str]] = None,
                 timeout: float = 5.0) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        self.conn.request("GET", path, headers={"Accept": "text/event-stream", **(headers or {})})
        self.resp = self.conn.getresponse()
        self.status = self.resp.status
        self.headers = self.resp.headers

    def next_event(self, timeout: float = 5.0) -> Optional[dict]:
        """The next event, or None at the end of the stream; raises
        socket.timeout when none comes within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        event: Dict[str, object] = {"event": "message", "data": [], "id": None}
        seen_field = False
        while True:
            self.conn.sock.settimeout(max(0.01, deadline - time.monotonic()))
            raw = self.resp.readline()
            if not raw:
                return None
            line = raw.decode("utf-8")
            line = line[:-1] if line.endswith("\n") else line
            line = line[:-1] if line.endswith("\r") else line
            if line == "":
                if seen_field and event["data"]:
                    event["data"] = "\n".join(event["data"])
                    return event
                event, seen_field = {"event": "message", "data": [], "id": None}, False
                continue
            if line.startswith(":"):
                continue  # heartbeat
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            seen_field = True
            if field == "data":
                event["data"].append(value)
            elif field in ("event", "id"):
                event[field] = value

    def close(self) -> None:
        self.conn.close()
