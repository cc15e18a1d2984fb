// A real nginx (daemon off, so it is our child) with the module loaded, in its
// own prefix, like t/lib/SSETest.pm: `nginx -p PREFIX/ -c PREFIX/nginx.conf`.

import fs from 'node:fs';
import path from 'node:path';
import { REPO } from './redis.mjs';
import {
  freePort, spawnLogged, stopGroup, tempDir, waitUntil, exited, childrenOf, portOpen, run, slurp, alive,
} from './procs.mjs';

export const NGINX_BIN = process.env.NGINX_BIN || '/usr/sbin/nginx';
export const SSE_MODULE = path.resolve(process.env.SSE_MODULE || path.join(REPO, 'target/release/libngx_http_sse_module.so'));

/** Why the suite cannot run here, or null. */
export function missingPrerequisite() {
  if (!fs.existsSync(SSE_MODULE)) return `nginx module not built: ${SSE_MODULE} does not exist (run 'make build' or set SSE_MODULE)`;
  try { fs.accessSync(NGINX_BIN, fs.constants.X_OK); } catch { return `nginx binary ${NGINX_BIN} is not executable (set NGINX_BIN)`; }
  if (!fs.existsSync('/usr/bin/chromium') && !process.env.CHROMIUM_BIN) return 'no Chromium at /usr/bin/chromium (set CHROMIUM_BIN)';
  return null;
}

// One line per request; an HTTP/1.1 stream logs its line when it is
// established (status 200), see README "Logs".
const LOG_FORMAT = `'$msec $status "$request_uri" lei="$http_last_event_id" user="$cookie_user" conn=$connection pid=$pid'`;

export function nginxConf({ prefix, port, redisPort, authPort, pagesDir, workers = 2, session = true, extraEvents = '' }) {
  return `load_module ${SSE_MODULE};
daemon off;
master_process on;
worker_processes ${workers};
error_log ${prefix}/error.log info;
pid ${prefix}/nginx.pid;

events {
    worker_connections 1024;
}

http {
    log_format e2e ${LOG_FORMAT};
    access_log ${prefix}/access.log e2e;
    client_body_temp_path ${prefix}/client_body_temp;
    proxy_temp_path ${prefix}/proxy_temp;
    fastcgi_temp_path ${prefix}/fastcgi_temp;
    uwsgi_temp_path ${prefix}/uwsgi_temp;
    scgi_temp_path ${prefix}/scgi_temp;
    types {
        text/html html;
        text/javascript js mjs;
        application/json json map;
    }
    default_type application/octet-stream;

    sse_redis_url redis://127.0.0.1:${redisPort};

    server {
        listen 127.0.0.1:${port};
        server_name localhost;

        location = /events {
            auth_request /_auth;
            auth_request_set $sse_user $upstream_http_x_sse_user;
            auth_request_set $sse_grants $upstream_http_x_sse_channels;
            sse_channel $arg_channels;
            sse_allow $sse_grants;
            sse_user $sse_user;
            sse_channel_patterns on;
            sse_history on;
            sse_retry 1s;
            sse_heartbeat 5s;${session ? '\n            sse_session on;' : ''}${extraEvents}
        }

        # Live channel changes (README "Changing channels without
        # reconnecting"): the same auth, run again for each change. No
        # keep-alive here nor on /metrics, as on the pages: the connections
        # that stay established are the event streams.
        location = /events/subscribe {
            keepalive_timeout 0;
            auth_request /_auth;
            auth_request_set $sse_user $upstream_http_x_sse_user;
            auth_request_set $sse_grants $upstream_http_x_sse_channels;
            sse_subscribe;
            sse_allow $sse_grants;
            sse_user $sse_user;
        }

        location = /metrics {
            keepalive_timeout 0;
            sse_metrics;
            allow 127.0.0.1;
            deny all;
        }

        location = /_auth {
            internal;
            proxy_pass http://127.0.0.1:${authPort}/check;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header Cookie $http_cookie;
        }

        # Static pages: no keep-alive, so that the connections that stay
        # established on this port are the event streams.
        location / {
            root ${pagesDir};
            keepalive_timeout 0;
            add_header Cache-Control no-store;
        }
    }
}
`;
}

export class Nginx {
  constructor({ redisPort, authPort, pagesDir, workers = 2, session = true, port } = {}) {
    Object.assign(this, { redisPort, authPort, pagesDir, workers, session, port });
    this.prefix = tempDir('nginx');
    this.child = null;
    this.logChecked = 0;
  }

  get confPath() { return path.join(this.prefix, 'nginx.conf'); }
  get accessLogPath() { return path.join(this.prefix, 'access.log'); }
  get errorLog() { return slurp(path.join(this.prefix, 'error.log')); }
  get pid() { return this.child?.pid; }

  writeConf() {
    fs.writeFileSync(this.confPath, nginxConf(this));
  }

  async start(timeoutMs = 10000) {
    if (!this.port) this.port = await freePort();
    this.writeConf();
    const child = spawnLogged('nginx', NGINX_BIN, ['-p', this.prefix + '/', '-c', this.confPath],
      path.join(this.prefix, 'stderr.log'));
    this.child = child;
    const ok = await waitUntil(async () => {
      if (exited(child)) throw new Error('exited');
      return childrenOf(child.pid).length >= this.workers && (await portOpen(this.port));
    }, timeoutMs, 30);
    if (!ok) {
      const why = exited(child) ? 'exited at start' : `not listening on ${this.port} within ${timeoutMs} ms`;
      await this.stop();
      throw new Error(`nginx ${why}:\n${slurp(path.join(this.prefix, 'stderr.log'))}${this.errorLog}`);
    }
    return this;
  }

  workerPids() { return this.child ? childrenOf(this.child.pid) : []; }

  /** `nginx -s reload -p PREFIX/ -c CONF`, then waits for a full new
   * generation of workers. Returns { oldWorkers, ms }. */
  async reload(timeoutMs = 10000) {
    const t0 = Date.now();
    const old = new Set(this.workerPids());
    const r = await run(NGINX_BIN, ['-p', this.prefix + '/', '-c', this.confPath, '-s', 'reload']);
    if (r.code !== 0) throw new Error(`nginx -s reload failed (${r.code}): ${r.out}`);
    const ok = await waitUntil(() => this.workerPids().filter((p) => !old.has(p)).length >= this.workers, timeoutMs, 20);
    if (!ok) throw new Error(`no new nginx workers ${timeoutMs} ms after reload:\n${this.errorLog}`);
    return { oldWorkers: [...old], ms: Date.now() - t0 };
  }

  /** Waits until the given (old) workers are gone; true if they are. */
  waitGone(pids, timeoutMs = 10000) {
    return waitUntil(() => !pids.some((p) => alive(p)), timeoutMs, 20);
  }

  /** Parsed access-log lines: { t (ms), status, uri, path, lei, user, conn, pid }. */
  accessLog() {
    const out = [];
    for (const line of slurp(this.accessLogPath).split('\n')) {
      const m = /^(\d+\.\d+) (\d+) "([^"]*)" lei="([^"]*)" user="([^"]*)" conn=(\d+) pid=(\d+)$/.exec(line);
      if (!m) continue;
      const uri = m[3];
      out.push({
        t: Math.round(Number(m[1]) * 1000), status: Number(m[2]), uri, path: uri.split('?')[0],
        lei: m[4] === '-' ? '' : m[4], user: m[5] === '-' ? '' : m[5], conn: Number(m[6]), pid: Number(m[7]),
        channels: new URLSearchParams(uri.split('?')[1] || '').get('channels'),
      });
    }
    return out;
  }

  /** Access-log lines of established event streams (GET /events answered 200). */
  streams() { return this.accessLog().filter((l) => l.path === '/events' && l.status === 200); }

  /** Access-log lines of /events requests that were refused (non-200). */
  refusedStreams() { return this.accessLog().filter((l) => l.path === '/events' && l.status !== 200); }

  /** Access-log lines of live channel changes (POST /events/subscribe). */
  changes() { return this.accessLog().filter((l) => l.path === '/events/subscribe'); }

  /** The module's metrics (GET /metrics): { 'name{labels}': value } of the sse_ samples. */
  async metrics() {
    const res = await fetch(`http://127.0.0.1:${this.port}/metrics`);
    const out = {};
    for (const line of (await res.text()).split('\n')) {
      const m = /^(sse_\S+)\s+(\S+)$/.exec(line);
      if (m) out[m[1]] = Number(m[2]);
    }
    return out;
  }

  /** Lines of error.log at [alert] or [emerg], or a crashed worker, not yet
   * reported by a previous call. */
  newAlerts() {
    const log = this.errorLog;
    const end = log.lastIndexOf('\n') + 1;
    const part = log.slice(Math.min(this.logChecked, end), end);
    this.logChecked = end;
    return part.split('\n').filter((l) => /\[(?:alert|emerg)\]|exited on signal/.test(l));
  }

  /** error.log lines that start with the module's own `sse:` messages. */
  sseLogLines() {
    return this.errorLog.split('\n').filter((l) => / sse: /.test(l));
  }

  async stop() {
    if (!this.child) return;
    await stopGroup(this.child, 'SIGTERM', 10000);
    this.child = null;
  }
}
