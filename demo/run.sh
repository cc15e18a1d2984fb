#!/usr/bin/env bash
# shellcheck disable=SC2317  # functions run from traps look unreachable
# nginx-sse demo: redis-server + nginx with the module + a demo auth service
# + a fake ETL publisher, all on 127.0.0.1, all stopped by Ctrl-C; the page is
# a React app on @nginx-sse/react, bundled here. `make demo` builds the module
# and then runs this script.
#
#   demo/run.sh [path/to/libngx_http_sse_module.so]
#
# Environment (all optional):
#   SSE_MODULE       module path if no argument (default: target/release/...)
#   NGINX_BIN        nginx binary (default /usr/sbin/nginx); it must be the
#                    nginx version the module was built against
#   REDIS_SERVER     redis-server binary (default: redis-server from PATH)
#   PYTHON           python3 binary for the publisher and auth service (default: python3)
#   NPM              npm binary for the page's packages (default: npm)
#   DEMO_HTTP_PORT   port of the page (default 8080 if free, else any free)
#   DEMO_REDIS_PORT  port of redis-server (default: any free port)
#   DEMO_RATE        log lines per second published (default 5)
#
# Everything it writes goes to .run/demo/ in the repository (git-ignored):
# nginx.conf, error.log, access.log, redis.log, www/ (the bundled page).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUN=$REPO/.run/demo
MODULE=${1:-${SSE_MODULE:-$REPO/target/release/libngx_http_sse_module.so}}
NGINX_BIN=${NGINX_BIN:-/usr/sbin/nginx}
REDIS_SERVER=${REDIS_SERVER:-redis-server}
PYTHON=${PYTHON:-python3}
NPM=${NPM:-npm}

die() { echo "demo: $*" >&2; exit 1; }

command -v "$PYTHON" >/dev/null || die "$PYTHON not found (apt-get install python3)"
command -v "$REDIS_SERVER" >/dev/null || die "redis-server not found (apt-get install redis-server)"
[[ -x $NGINX_BIN ]] || die "nginx not found at $NGINX_BIN (apt-get install nginx, or set NGINX_BIN)"
[[ -f $MODULE ]] || die "module not found: $MODULE (build it with: make build)"
command -v node >/dev/null && command -v "$NPM" >/dev/null || die "node and npm are needed for the page (apt-get install nodejs npm)"
MODULE=$(cd "$(dirname "$MODULE")" && pwd)/$(basename "$MODULE")
for path in "$MODULE" "$RUN" "$REPO/demo"; do
    [[ $path != *[[:space:]\;\{\}\"\'\$\#]* ]] || die "path unusable in nginx.conf: $path"
done

# --- ports ---------------------------------------------------------------
port_free() {  # port_free PORT: true if nothing listens on 127.0.0.1:PORT
    "$PYTHON" - "$1" <<'EOF'
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
EOF
}
free_ports() {  # free_ports N: N distinct free ports, one a line
    "$PYTHON" - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print("\n".join(str(s.getsockname()[1]) for s in socks))
EOF
}
{ read -r SPARE1; read -r SPARE2; read -r AUTH_PORT; } < <(free_ports 3)
if [[ -n ${DEMO_HTTP_PORT:-} ]]; then
    port_free "$DEMO_HTTP_PORT" || die "DEMO_HTTP_PORT $DEMO_HTTP_PORT is in use"
    HTTP_PORT=$DEMO_HTTP_PORT
elif port_free 8080; then
    HTTP_PORT=8080
else
    HTTP_PORT=$SPARE1
fi
if [[ -n ${DEMO_REDIS_PORT:-} ]]; then
    port_free "$DEMO_REDIS_PORT" || die "DEMO_REDIS_PORT $DEMO_REDIS_PORT is in use"
    REDIS_PORT=$DEMO_REDIS_PORT
else
    REDIS_PORT=$SPARE2
fi
[[ $HTTP_PORT != "$REDIS_PORT" ]] || die "http and redis ports are the same ($HTTP_PORT)"

# --- run directory and page ----------------------------------------------
mkdir -p "$RUN"
if [[ ! -d $REPO/clients/js/node_modules ]]; then
    echo "demo: installing the page's npm packages (clients/js, from its lockfile)"
    (cd "$REPO/clients/js" && "$NPM" ci --no-audit --no-fund --loglevel=error) || die "npm ci failed in clients/js"
fi
node "$REPO/demo/app/build.mjs" "$RUN/www" || die "bundling the page failed"
if [[ -s $RUN/nginx.pid ]] && kill -0 "$(cat "$RUN/nginx.pid")" 2>/dev/null; then
    die "an nginx from an earlier demo still runs (pid $(cat "$RUN/nginx.pid")); stop it first"
fi
rm -f "$RUN/nginx.pid"

wait_port() {  # wait_port PORT PID NAME LOG: until PORT accepts, or PID dies
    local i
    for ((i = 0; i < 100; i++)); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        if ! kill -0 "$2" 2>/dev/null; then
            echo "demo: $3 exited during startup; last lines of $4:" >&2
            tail -n 20 "$4" >&2 || true
            return 1
        fi
        sleep 0.1
    done
    echo "demo: $3 did not listen on port $1 within 10s (see $4)" >&2
    return 1
}

# stop NAME PID SIGNAL SECONDS: signal, wait up to SECONDS, then SIGKILL the
# process group (each service runs in its own session, see setsid below).
stop() {
    local name=$1 pid=$2 sig=$3 secs=$4 i
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
    kill "-$sig" "$pid" 2>/dev/null || true
    for ((i = 0; i < secs * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "demo: $name did not stop within ${secs}s, killing it" >&2
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    echo "demo: $name stopped"
}

REDIS_PID='' NGINX_PID='' PUB_PID='' AUTH_PID=''
cleanup() {
    trap - INT TERM EXIT
    echo
    echo "demo: stopping..."
    stop publisher "$PUB_PID" TERM 3
    stop auth "$AUTH_PID" TERM 3
    stop nginx "$NGINX_PID" QUIT 6   # graceful; worker_shutdown_timeout 3s closes streams
    stop redis-server "$REDIS_PID" TERM 5
    echo "demo: stopped (logs in $RUN)"
}
trap 'cleanup; exit 130' INT
trap 'cleanup; exit 143' TERM
trap cleanup EXIT

# The services run in their own sessions (setsid) so that Ctrl-C reaches only
# this script, which then stops them in order.

# --- redis ---------------------------------------------------------------
setsid "$REDIS_SERVER" --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$RUN" --logfile "$RUN/redis.log" &
REDIS_PID=$!
wait_port "$REDIS_PORT" "$REDIS_PID" redis-server "$RUN/redis.log"

# --- nginx ---------------------------------------------------------------
sed_escape() { printf '%s' "$1" | sed 's/[\\|&]/\\&/g'; }
sed -e "s|@MODULE@|$(sed_escape "$MODULE")|g" \
    -e "s|@PREFIX@|$(sed_escape "$RUN")|g" \
    -e "s|@HTTP_PORT@|$HTTP_PORT|g" \
    -e "s|@REDIS_PORT@|$REDIS_PORT|g" \
    -e "s|@AUTH_PORT@|$AUTH_PORT|g" \
    -e "s|@WWW@|$(sed_escape "$RUN/www")|g" \
    "$REPO/nginx-conf/demo.conf" > "$RUN/nginx.conf"

# As root, nginx workers run as the binary's default user (www-data on
# Debian); if that user cannot read the page (repo under /root, say), run the
# workers as root: this nginx only listens on 127.0.0.1.
if [[ $(id -u) == 0 ]]; then
    worker_user=$("$NGINX_BIN" -V 2>&1 | sed -n 's/.*--user=\([^ ]*\).*/\1/p')
    worker_user=${worker_user:-nobody}
    if ! id "$worker_user" >/dev/null 2>&1 ||
        ! runuser -u "$worker_user" -- test -r "$RUN/www/index.html" 2>/dev/null; then
        echo "demo: $worker_user cannot read $RUN/www; nginx workers will run as root"
        sed -i '1i user root;' "$RUN/nginx.conf"
    fi
fi

# --- auth service --------------------------------------------------------
setsid "$PYTHON" -u "$REPO/demo/auth.py" --port "$AUTH_PORT" &
AUTH_PID=$!
wait_port "$AUTH_PORT" "$AUTH_PID" "auth service" /dev/null

NGINX=("$NGINX_BIN" -p "$RUN/" -e "$RUN/error.log" -c "$RUN/nginx.conf")
if ! "${NGINX[@]}" -t -q; then
    die "nginx -t failed for $RUN/nginx.conf (is $NGINX_BIN the nginx version the module was built for?)"
fi
setsid "${NGINX[@]}" &
NGINX_PID=$!
wait_port "$HTTP_PORT" "$NGINX_PID" nginx "$RUN/error.log"

# --- publisher -----------------------------------------------------------
# Log lines are published with history (FCALL sse_publish): load the
# function now so the publisher does not race the nginx workers that load it.
"${REDIS_CLI:-redis-cli}" -p "$REDIS_PORT" -x FUNCTION LOAD REPLACE < "$REPO/redis/sse.lua" > /dev/null \
    || die "could not load redis/sse.lua into redis"
setsid "$PYTHON" -u "$REPO/demo/publisher.py" --redis-port "$REDIS_PORT" --rate "${DEMO_RATE:-5}" &
PUB_PID=$!

BASE=http://127.0.0.1:$HTTP_PORT
cat <<EOF

  nginx-sse demo is running (Ctrl-C stops it)

  Page:        $BASE/   (sign in as alice, bob or carol: each sees what
               the demo auth service grants them, enforced by nginx)

  Raw stream:  curl -N '$BASE/sse/logs?workspace=w2&workflow=customer-sync'
               curl -N -b demo_user=alice '$BASE/events?channels=logs:w1:nightly-sales,dashboards:*'
  Publish:     redis-cli -p $REDIS_PORT FCALL sse_publish 0 logs:w1:nightly-sales '{"ts":"now","level":"ERROR","step":"load","msg":"hello from redis-cli"}'
  Revoke:      redis-cli -p $REDIS_PORT PUBLISH sse:control 'revoke alice'

  nginx:  $NGINX_BIN (pid $NGINX_PID), config and logs in $RUN
  redis:  127.0.0.1:$REDIS_PORT (pid $REDIS_PID)

EOF

# Wait until Ctrl-C (the traps stop everything) or until a service dies.
set +e
wait -n "$REDIS_PID" "$NGINX_PID" "$PUB_PID" "$AUTH_PID"
status=$?
set -e
for svc in "redis-server:$REDIS_PID:$RUN/redis.log" "nginx:$NGINX_PID:$RUN/error.log" "publisher:$PUB_PID:" "auth:$AUTH_PID:"; do
    IFS=: read -r name pid log <<<"$svc"
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "demo: $name exited unexpectedly (status $status)${log:+; see $log}" >&2
    fi
done
exit 1
