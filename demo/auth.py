#!/usr/bin/env python3
"""Demo auth service for nginx-sse: what an organisation's existing auth
service answers to nginx's `auth_request`.

    GET /check         (called by nginx, never by the browser)
        200 + X-Sse-User: <id> + X-Sse-Channels: <grants>   for a signed-in user
        401                                                  otherwise
    GET /login?user=ID  sets the session cookie and goes back to the page
    GET /logout         clears it
    GET /whoami         the signed-in user as JSON (401 if none)

The "session" is a cookie naming a demo user: enough to show the access
story (who may read which channels is decided here, enforced by nginx),
obviously not a real login. Standard library only.

    python3 demo/auth.py --port 9001
"""
import argparse
import json
import signal
import sys
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

COOKIE = "demo_user"

# Grants use nginx-sse's patterns: `*` is one `:` segment, `**` (last) one or more.
USERS = {
    "alice": {
        "label": "Alice, analyst in workspace w1 (1 dashboard of 40)",
        "workspaces": ["w1"],
        "grants": "logs:w1:*, metrics:w1, alerts:alice, dashboards:7",
    },
    "bob": {
        "label": "Bob, platform admin (everything, all 40 dashboards)",
        "workspaces": ["w1", "w2"],
        "grants": "logs:*:*, metrics:*, alerts:bob, dashboards:*",
    },
    "carol": {
        "label": "Carol, engineer in workspace w2 (dashboards 1-3)",
        "workspaces": ["w2"],
        "grants": "logs:w2:*, metrics:w2, alerts:carol, dashboards:1, dashboards:2, dashboards:3",
    },
}


class Handler(BaseHTTPRequestHandler):
    server_version = "demo-auth"

    def user(self):
        cookie = SimpleCookie(self.headers.get("Cookie", ""))
        name = cookie[COOKIE].value if COOKIE in cookie else None
        return name if name in USERS else None

    def answer(self, status, body=b"", headers=()):
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self):
        url = urlparse(self.path)
        user = self.user()
        if url.path == "/check":
            if user is None:
                return self.answer(401)
            return self.answer(200, headers=[("X-Sse-User", user),
                                             ("X-Sse-Channels", USERS[user]["grants"])])
        if url.path == "/login":
            name = parse_qs(url.query).get("user", [""])[0]
            if name not in USERS:
                return self.answer(400, b"unknown demo user\n", [("Content-Type", "text/plain")])
            return self.answer(303, headers=[
                ("Set-Cookie", f"{COOKIE}={name}; Path=/; HttpOnly; SameSite=Lax"),
                ("Location", "/")])
        if url.path == "/logout":
            return self.answer(303, headers=[
                ("Set-Cookie", f"{COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax"),
                ("Location", "/")])
        if url.path == "/whoami":
            users = [{"id": k, "label": v["label"]} for k, v in USERS.items()]
            body = {"user": None, "users": users}
            if user is not None:
                body.update(user=user, label=USERS[user]["label"], grants=USERS[user]["grants"],
                            workspaces=USERS[user]["workspaces"])
            return self.answer(200, json.dumps(body).encode(), [("Content-Type", "application/json"),
                                                                ("Cache-Control", "no-store")])
        return self.answer(404)

    def log_message(self, fmt, *args):  # quiet: nginx logs the requests
        pass


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, required=True)
    a = p.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    print(f"auth: demo users {', '.join(USERS)} on 127.0.0.1:{a.port}", flush=True)
    try:
        server.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass


if __name__ == "__main__":
    main()
