#!/bin/bash
# End-to-end test of the Debian package on this machine's system nginx
# (`make deb-test`, part of `make test`). Root only: it installs the package,
# starts /usr/sbin/nginx with the stock /etc/nginx/nginx.conf, removes and
# purges the package. Skipped (exit 0) for other users.
#
# The stock config's default site listens on port 80 on all interfaces (IPv4
# and IPv6) while the system nginx runs (a few seconds); the test sends nothing
# there. Its own server and redis-server listen on free 127.0.0.1 ports.
#
# Whatever happens, the EXIT trap stops the nginx and redis-server it started,
# removes its conf.d snippet and purges the package: the system nginx is left
# stopped, with its configuration as found. The stock error log may receive
# lines; an empty /run/nginx.pid (which `nginx -t` leaves) is removed if it was
# not there before, and the temp directories nginx creates or chowns under
# /var/lib/nginx get their owner back (or are removed if new and empty).
set -u

if [ "$(id -u)" != 0 ]; then
  echo "deb-test: skipped: needs root (installs the package and starts the system nginx)"
  exit 0
fi

REPO=$(cd "$(dirname "$0")/.." && pwd)
MAKE=${MAKE:-make}
PKG=libnginx-mod-http-sse
LINK=/etc/nginx/modules-enabled/50-mod-http-sse.conf
AVAILABLE=/usr/share/nginx/modules-available/mod-http-sse.conf
MODFILE=/usr/lib/nginx/modules/ngx_http_sse_module.so
SNIPPET=/etc/nginx/conf.d/nginx-sse-deb-test.conf
NGINX=/usr/sbin/nginx
# The pid file of the stock config, found as Debian's init script finds it.
PIDFILE=$(grep -Ev '^\s*#' /etc/nginx/nginx.conf | awk 'BEGIN { RS="[;{}]" } { if ($1 == "pid") print $2 }' | head -n1)
PIDFILE=${PIDFILE:-/run/nginx.pid}
APT=(env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 -y -q)

pass=0 fail=0 n=0
ok()     { n=$((n+1)); pass=$((pass+1)); echo "ok $n - $*"; }
not_ok() { n=$((n+1)); fail=$((fail+1)); echo "not ok $n - $*"; }
check()  { local what=$1; shift; if "$@"; then ok "$what"; return 0; else not_ok "$what"; return 1; fi; }
diag()   { sed 's/^/# /'; }
bail()   { not_ok "$*"; exit 1; }   # the EXIT trap cleans up and prints the summary

# One deb-test at a time on this machine (they share the system nginx).
exec 9>/run/lock/nginx-sse-deb-test.lock
flock -w 900 9 || { echo "deb-test: another deb-test holds /run/lock/nginx-sse-deb-test.lock"; exit 1; }

tmp=$(mktemp -d /tmp/nginx-sse-deb-test.XXXXXX)
chmod 755 "$tmp"   # apt's _apt user reads the .deb from here
nginx_master= redis_pid= curl_pid= cleaned=
pidfile_existed=no; [ -e "$PIDFILE" ] && pidfile_existed=yes
# nginx (even `nginx -t`) creates its temp directories under /var/lib/nginx and
# chowns them to the config's worker user: note them to put them back.
VARLIB=/var/lib/nginx
varlib_before=$(stat -c '%u:%g %n' "$VARLIB"/* 2>/dev/null)

alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }
# Processes of the daemon's session: nginx's master calls setsid(), so its
# workers share its session id.
session_pids() { ps -e -o sid=,pid= | awk -v s="$1" '$1 == s { print $2 }'; }
pkg_status() { dpkg-query -W -f='${db:Status-Abbrev}' "$PKG" 2>/dev/null | tr -d ' '; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
nginx_t() { "$NGINX" -t -q 2>"$tmp/nginx-t.err"; }
listening() { [ -n "$(ss -Hltn "sport = :$1")" ]; }

stop_nginx() {
  alive "$nginx_master" || { nginx_master=; return 0; }
  local i pids
  kill -QUIT "$nginx_master" 2>/dev/null
  for i in $(seq 100); do [ -z "$(session_pids "$nginx_master")" ] && break; sleep 0.1; done
  pids=$(session_pids "$nginx_master")
  if [ -n "$pids" ]; then
    echo "# nginx did not quit in 10 s; terminating $pids"
    kill -TERM $pids 2>/dev/null; sleep 1
    pids=$(session_pids "$nginx_master"); [ -n "$pids" ] && kill -KILL $pids 2>/dev/null
  fi
  nginx_master=
}

cleanup() {
  [ -n "$cleaned" ] && return; cleaned=1
  alive "$curl_pid" && kill "$curl_pid" 2>/dev/null
  stop_nginx
  rm -f "$SNIPPET"
  if [ -n "$(pkg_status)" ] && [ "$(pkg_status)" != un ]; then
    "${APT[@]}" purge "$PKG" >"$tmp/apt-cleanup.log" 2>&1 || { echo "# purge failed:"; diag <"$tmp/apt-cleanup.log"; }
  fi
  if alive "$redis_pid"; then
    kill "$redis_pid" 2>/dev/null
    for i in $(seq 50); do alive "$redis_pid" || break; sleep 0.1; done
  fi
}

# After the final checks: `nginx -t` leaves an empty pid file behind; drop it
# unless it was there before.
last_cleanup() {
  [ "$pidfile_existed" = no ] && [ -f "$PIDFILE" ] && [ ! -s "$PIDFILE" ] && rm -f "$PIDFILE"
  local d owner
  for d in "$VARLIB"/*; do
    [ -d "$d" ] || continue
    owner=$(awk -v p="$d" '$2 == p { print $1 }' <<<"$varlib_before")
    if [ -n "$owner" ]; then chown "$owner" "$d"; else rmdir "$d" 2>/dev/null; fi
  done
  rm -rf "$tmp"
}

final_state() {
  # The machine as the test found it: no system nginx, no link, no snippet,
  # package gone.
  check "clean: no system nginx process (pid file $PIDFILE empty or absent, no 'nginx: master process nginx')" \
    bash -c "[ ! -s '$PIDFILE' ] && ! pgrep -f '^nginx: master process (/usr/sbin/)?nginx\$' >/dev/null"
  check "clean: no $LINK (nor .removed)" bash -c "[ ! -e '$LINK' ] && [ ! -L '$LINK' ] && [ ! -L '$LINK.removed' ]"
  check "clean: no conf.d snippet" test ! -e "$SNIPPET"
  check "clean: $PKG not installed (dpkg status: '$(pkg_status)')" bash -c "s=\$(dpkg-query -W -f='\${db:Status-Abbrev}' $PKG 2>/dev/null | tr -d ' '); [ -z \"\$s\" ] || [ \"\$s\" = un ]"
  check "clean: stock nginx -t passes" nginx_t
}

finish() {
  local rc=$?
  cleanup
  final_state
  last_cleanup
  echo "1..$n"
  echo "deb-test: $pass passed, $fail failed"
  [ "$fail" = 0 ] && [ "$rc" = 0 ] && exit 0
  exit 1
}
trap finish EXIT
trap 'not_ok "interrupted by a signal (cleaning up)"; exit 1' INT TERM HUP

# --- preconditions: the system nginx is stopped and port 80 is free -----------
if [ -s "$PIDFILE" ] && alive "$(cat "$PIDFILE")"; then
  bail "the system nginx already runs (pid $(cat "$PIDFILE")): not touching it"
fi
pgrep -f '^nginx: master process (/usr/sbin/)?nginx$' >/dev/null && bail "a system nginx master already runs: not touching it"
listening 80 && bail "port 80 is in use: the stock default site could not start"
case "$(pkg_status)" in ""|un) ;; *) echo "# note: $PKG was installed ($(pkg_status)); the test reinstalls and purges it";; esac
check "stock config: nginx -t passes before the test" nginx_t || { diag <"$tmp/nginx-t.err"; bail "stock config broken"; }

# --- build -------------------------------------------------------------------
if "$MAKE" -C "$REPO" --no-print-directory deb >"$tmp/make.log" 2>&1; then
  ok "make deb"; grep -E '^(built|  )' "$tmp/make.log" | diag
else
  tail -30 "$tmp/make.log" | diag; bail "make deb"
fi
debs=("$REPO"/target/deb/${PKG}_*.deb)
[ ${#debs[@]} = 1 ] && [ -f "${debs[0]}" ] || bail "exactly one target/deb/${PKG}_*.deb"
deb=${debs[0]}
cp "$deb" "$tmp/" && chmod 644 "$tmp/$(basename "$deb")"
abi=$(sed -n 's/^nginx:abi=//p' /usr/share/nginx/src/debian/libnginx-mod.abisubstvars 2>/dev/null)
depends=$(dpkg-deb -f "$deb" Depends)
echo "# $(basename "$deb"): Depends: $depends"
check "Depends starts with nginx-dev's ABI ($abi)" bash -c "[ -n '$abi' ] && [[ '$depends' == '$abi, '* || '$depends' == '$abi' ]]"
contents=$(dpkg-deb -c "$deb" | awk '{ print $6 }')
for f in ./usr/lib/nginx/modules/ngx_http_sse_module.so ./usr/share/nginx/modules-available/mod-http-sse.conf \
         ./usr/share/nginx-sse/sse.lua ./usr/share/doc/$PKG/copyright ./usr/share/doc/$PKG/changelog.Debian.gz; do
  check "package ships $f" grep -qxF "$f" <<<"$contents"
done
check "all files owned by root:root" bash -c "! dpkg-deb -c '$deb' | awk '{ print \$2 }' | grep -qv '^root/root\$'"

# --- install -----------------------------------------------------------------
if "${APT[@]}" install "$tmp/$(basename "$deb")" >"$tmp/apt-install.log" 2>&1; then
  ok "apt-get install ./$(basename "$deb")"
else
  diag <"$tmp/apt-install.log"; bail "apt-get install"
fi
check "installed: dpkg status ii" test "$(pkg_status)" = ii
check "postinst enabled it: $LINK -> $AVAILABLE" test "$(readlink "$LINK")" = "$AVAILABLE"
check "$AVAILABLE loads modules/ngx_http_sse_module.so" grep -qx 'load_module modules/ngx_http_sse_module.so;' "$AVAILABLE"
check "nginx -t passes with the stock config and the module enabled" nginx_t || diag <"$tmp/nginx-t.err"
check "nginx -T shows the module loaded" bash -c "'$NGINX' -T 2>/dev/null | grep -q '^load_module modules/ngx_http_sse_module.so;'"

# --- run: redis + a server in conf.d + the system nginx ------------------------
rport=$(free_port)
redis-server --port "$rport" --bind 127.0.0.1 --dir "$tmp" --save '' --appendonly no \
  --logfile "$tmp/redis.log" >/dev/null 2>&1 &
redis_pid=$!
for i in $(seq 50); do redis-cli -p "$rport" ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done
check "redis-server on 127.0.0.1:$rport" bash -c "redis-cli -p $rport ping | grep -q PONG"

nport=$(free_port)
cat >"$SNIPPET" <<EOF
# nginx-sse deb-test (packaging/test-deb.sh); removed by the test.
sse_redis_url redis://127.0.0.1:$rport;
server {
    listen 127.0.0.1:$nport;
    access_log off;
    location /events { sse_channel \$arg_ch; }
}
EOF
check "nginx -t passes with the sse server in conf.d" nginx_t || diag <"$tmp/nginx-t.err"
if "$NGINX" >"$tmp/nginx-start.err" 2>&1; then
  for i in $(seq 50); do [ -s "$PIDFILE" ] && break; sleep 0.1; done
  nginx_master=$(cat "$PIDFILE" 2>/dev/null)
fi
alive "$nginx_master" || { diag <"$tmp/nginx-start.err"; bail "system nginx started"; }
ok "system nginx started (master $nginx_master)"
for i in $(seq 50); do listening "$nport" && break; sleep 0.1; done
check "sse server listens on 127.0.0.1:$nport" listening "$nport"

ch=debtest$$
curl -sN --max-time 30 -H 'Accept: text/event-stream' "http://127.0.0.1:$nport/events?ch=$ch" >"$tmp/stream" 2>"$tmp/curl.err" &
curl_pid=$!
subscribed=no
for i in $(seq 100); do
  [ "$(redis-cli -p "$rport" pubsub numsub "$ch" | tail -1)" -ge 1 ] 2>/dev/null && { subscribed=yes; break; }
  sleep 0.1
done
check "a worker subscribed to $ch in redis" test "$subscribed" = yes
redis-cli -p "$rport" publish "$ch" "hello from deb-test" >/dev/null
for i in $(seq 50); do grep -q '^data: hello from deb-test' "$tmp/stream" && break; sleep 0.1; done
check "the published message arrives on the stream (event: $ch, data: ...)" \
  bash -c "grep -qx 'event: $ch' '$tmp/stream' && grep -qx 'data: hello from deb-test' '$tmp/stream'"
grep -q . "$tmp/stream" || diag <"$tmp/curl.err"
kill "$curl_pid" 2>/dev/null; wait "$curl_pid" 2>/dev/null; curl_pid=

# --- remove while nginx runs ----------------------------------------------------
rm -f "$SNIPPET"   # it needs the module
if "${APT[@]}" remove "$PKG" >"$tmp/apt-remove.log" 2>&1; then
  ok "apt-get remove $PKG (nginx running)"
else
  diag <"$tmp/apt-remove.log"; not_ok "apt-get remove $PKG"
fi
check "removed: dpkg status rc" test "$(pkg_status)" = rc
check "removed: $LINK gone" bash -c "[ ! -e '$LINK' ] && [ ! -L '$LINK' ]"
check "removed: link kept as $LINK.removed (Debian's way to re-enable on reinstall)" test -L "$LINK.removed"
check "removed: $MODFILE gone" test ! -e "$MODFILE"
check "removed: the nginx-reload trigger ran (Processing triggers for nginx)" grep -q 'Processing triggers for nginx ' "$tmp/apt-remove.log"
check "nginx -t passes after remove" nginx_t || diag <"$tmp/nginx-t.err"
# nginx's trigger reloads through invoke-rc.d, which local policy-rc.d may deny
# (containers); reload by hand and check the running nginx drops the module.
kill -HUP "$nginx_master"
for i in $(seq 100); do listening "$nport" || break; sleep 0.1; done
check "running nginx reloaded without the module (sse port closed, master alive)" \
  bash -c "! [ -n \"\$(ss -Hltn 'sport = :$nport')\" ] && kill -0 $nginx_master"

# --- reinstall after remove re-enables; remove again ----------------------------
"${APT[@]}" install "$tmp/$(basename "$deb")" >"$tmp/apt-reinstall.log" 2>&1 || diag <"$tmp/apt-reinstall.log"
check "reinstall after remove: $LINK back, no .removed" \
  bash -c "[ \"\$(readlink '$LINK')\" = '$AVAILABLE' ] && [ ! -L '$LINK.removed' ]"
check "nginx -t passes after reinstall" nginx_t || diag <"$tmp/nginx-t.err"
"${APT[@]}" remove "$PKG" >"$tmp/apt-remove2.log" 2>&1 || diag <"$tmp/apt-remove2.log"
check "second remove: $LINK gone" bash -c "[ ! -e '$LINK' ] && [ ! -L '$LINK' ]"

# --- stop nginx, purge -----------------------------------------------------------
stop_nginx
check "system nginx stopped" bash -c "[ ! -s '$PIDFILE' ]"
if "${APT[@]}" purge "$PKG" >"$tmp/apt-purge.log" 2>&1; then
  ok "apt-get purge $PKG"
else
  diag <"$tmp/apt-purge.log"; not_ok "apt-get purge $PKG"
fi
check "purged: no $LINK.removed" test ! -L "$LINK.removed"
check "purged: /usr/share/nginx-sse gone" test ! -e /usr/share/nginx-sse
# finish (EXIT trap): cleanup, final state checks, summary.
