#!/usr/bin/env python3
"""Demo publisher for nginx-sse: fake Datashop ETL traffic on Redis pub/sub.

Publishes JSON log lines to  logs:{workspace}:{workflow},
metrics snapshots to         metrics:{workspace}   (about once a second),
dashboard values to          dashboards:{1..40}    (each once a second),
and now and then an alert to alerts:{user}.

Standard library only: speaks RESP to Redis over a plain socket.
If Redis goes away it retries every second; SIGINT/SIGTERM stop it cleanly.

    python3 demo/publisher.py --redis-port 6379 --rate 5
"""
import argparse
import datetime
import json
import random
import signal
import socket
import sys
import time

STEPS = {
    "extract": [
        ("INFO", "read {n:,} rows from s3://datashop-{ws}/raw/{wf}/{day}/part-{part:04d}.parquet"),
        ("INFO", "connected to source postgres://replica-{part}.{ws}.internal/crm"),
        ("WARN", "source throttled request, retrying in {sec}s (attempt {attempt}/5)"),
        ("ERROR", "timeout after 30s reading s3://datashop-{ws}/raw/{wf}/{day}/part-{part:04d}.parquet"),
    ],
    "transform": [
        ("INFO", "deduplicated {n:,} rows ({pct}% duplicates)"),
        ("INFO", "joined orders with customers: {n:,} rows out"),
        ("WARN", "{bad} rows failed schema validation (column 'amount' not numeric), quarantined"),
        ("ERROR", "UDF normalize_address raised ValueError on row {n}"),
    ],
    "load": [
        ("INFO", "wrote {n:,} rows to warehouse.{wfu}_{day} in {sec}.{part}s"),
        ("INFO", "merged {n:,} rows into warehouse.{wfu} (upsert on id)"),
        ("WARN", "warehouse lock held by another job, waited {sec}s"),
        ("ERROR", "COPY into warehouse.{wfu} failed: disk quota exceeded"),
    ],
}
LEVEL_WEIGHTS = {"INFO": 85, "WARN": 11, "ERROR": 4}
USERS = ["alice", "bob", "carol"]


def now_iso():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def log_line(ws, wf):
    step = random.choice(list(STEPS))
    choices = STEPS[step]
    level, template = random.choices(choices, weights=[LEVEL_WEIGHTS[lv] for lv, _ in choices])[0]
    msg = template.format(
        n=random.randint(1_000, 2_000_000), ws=ws, wf=wf, wfu=wf.replace("-", "_"),
        day=datetime.date.today().isoformat(), part=random.randint(0, 63),
        sec=random.randint(1, 40), attempt=random.randint(1, 4),
        pct=random.randint(0, 9), bad=random.randint(1, 500),
    )
    return {"ts": now_iso(), "level": level, "workspace": ws, "workflow": wf, "step": step, "msg": msg}


def metrics(ws, workflows):
    return {
        "ts": now_iso(), "workspace": ws,
        "rows_per_s": random.randint(2_000, 60_000),
        "lag_s": round(random.uniform(0, 12), 1),
        "running": random.randint(1, len(workflows)),
        "queued": random.randint(0, 5),
        "errors_5m": random.choices([0, 1, 2, 5], weights=[70, 20, 7, 3])[0],
    }


def alert(ws, workflows):
    wf = random.choice(workflows)
    return {"ts": now_iso(), "severity": random.choice(["warning", "critical"]),
            "workspace": ws, "workflow": wf,
            "msg": f"workflow {wf} in {ws} " + random.choice(
                ["failed 3 times in a row", "is 20 min behind schedule", "produced 0 rows"])}


def dashboard(i):
    return {"ts": now_iso(), "id": i, "value": random.randint(0, 100),
            "trend": random.choice(["up", "down", "flat"])}


def resp_command(*args):
    """Encode a command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else arg
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class Redis:
    """Just enough of a Redis client to PUBLISH, reconnecting as needed."""

    def __init__(self, host, port):
        self.host, self.port = host, port
        self.sock = None
        self.buf = b""
        self.state = None  # last state printed, so each change prints once

    def _say(self, state, text):
        if state != self.state:
            self.state = state
            print(f"publisher: {text}", flush=True)

    def _connect(self):
        while self.sock is None:
            try:
                self.sock = socket.create_connection((self.host, self.port), timeout=5)
                self.buf = b""
                self._say("up", f"connected to redis at {self.host}:{self.port}")
            except OSError as e:
                self._say("down", f"redis at {self.host}:{self.port} unreachable ({e}); retrying every second")
                time.sleep(1)

    def _reply_line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("connection closed by redis")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def publish(self, channel, payload, history=False):
        """PUBLISH (or, with history, FCALL sse_publish, which also keeps the
        message for Last-Event-ID resume) and return the integer reply: the
        number of subscribers, or the message's id (None if it failed)."""
        self._connect()
        if history:
            command = resp_command("FCALL", "sse_publish", "0", channel, payload)
        else:
            command = resp_command("PUBLISH", channel, payload)
        try:
            self.sock.sendall(command)
            line = self._reply_line()
        except OSError as e:
            self.sock.close()
            self.sock = None
            self._say("down", f"lost redis connection ({e}); reconnecting")
            return None
        if line.startswith(b"-"):
            print(f"publisher: redis error: {line[1:].decode(errors='replace')}", flush=True)
            return None
        return int(line[1:])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--redis-host", default="127.0.0.1")
    p.add_argument("--redis-port", type=int, default=6379)
    p.add_argument("--rate", type=float, default=5.0, help="log lines per second, all channels together (default 5)")
    p.add_argument("--no-history", dest="history", action="store_false",
                   help="publish log lines with plain PUBLISH instead of FCALL sse_publish")
    p.add_argument("--workspaces", default="w1,w2")
    p.add_argument("--workflows", default="nightly-sales,customer-sync,ml-features")
    p.add_argument("--users", default=",".join(USERS), help="alert recipients")
    p.add_argument("--dashboards", type=int, default=40, help="dashboards:1..N get values (default 40)")
    p.add_argument("--count", type=int, default=0, help="stop after this many log lines (0 = run forever)")
    p.add_argument("-v", "--verbose", action="store_true", help="print every message published")
    a = p.parse_args()
    workspaces = [w for w in a.workspaces.split(",") if w]
    workflows = [w for w in a.workflows.split(",") if w]
    users = [u for u in a.users.split(",") if u]
    if a.rate <= 0 or not workspaces or not workflows:
        p.error("need --rate > 0 and at least one workspace and workflow")

    # Installed explicitly: a shell script that starts us with `&` would
    # otherwise leave SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    redis = Redis(a.redis_host, a.redis_port)
    print(f"publisher: {a.rate:g} log lines/s to logs:{{{','.join(workspaces)}}}:{{{','.join(workflows)}}}, "
          f"metrics:<workspace> every second, alerts:{{{','.join(users)}}} now and then", flush=True)

    def send(channel, obj):
        payload = json.dumps(obj, separators=(",", ":"))
        # Log lines go through the history (a page that reconnects misses
        # none); metrics and alerts are fire-and-forget PUBLISH.
        history = a.history and channel.startswith("logs:")
        reply = redis.publish(channel, payload, history=history)
        if a.verbose:
            what = f"id {reply}" if history else f"{reply} subscriber(s)"
            print(f"  {channel} -> {what}: {payload}", flush=True)

    sent, next_log, next_metrics = 0, 0.0, 0.0
    try:
        while not a.count or sent < a.count:
            now = time.monotonic()
            if now >= next_metrics:
                next_metrics = now + 1
                for w in workspaces:
                    send(f"metrics:{w}", metrics(w, workflows))
                for i in range(1, a.dashboards + 1):
                    send(f"dashboards:{i}", dashboard(i))
            if now >= next_log:
                next_log = now + random.expovariate(a.rate)
                ws, wf = random.choice(workspaces), random.choice(workflows)
                send(f"logs:{ws}:{wf}", log_line(ws, wf))
                sent += 1
                if users and random.random() < 0.03:
                    send(f"alerts:{random.choice(users)}", alert(ws, workflows))
            time.sleep(max(0.0, min(next_log, next_metrics) - time.monotonic()))
    except (KeyboardInterrupt, SystemExit):
        pass
    print(f"publisher: stopped after {sent} log lines", flush=True)


if __name__ == "__main__":
    main()
