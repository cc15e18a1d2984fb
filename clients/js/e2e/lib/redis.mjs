// redis-server on a free loopback port, in a temporary --dir, and the publish
// helpers (PUBLISH, FCALL sse_publish, a steady publisher).

import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { RedisConn, redisCmd } from './resp.mjs';
import { freePort, spawnLogged, stopGroup, tempDir, waitUntil, waitExit, exited, slurp, sleep, within } from './procs.mjs';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../..');
export const REDIS_BIN = process.env.REDIS_BIN || 'redis-server';
export const SSE_LUA = path.join(REPO, 'redis/sse.lua');

export class RedisServer {
  /** persist: AOF (`--appendonly yes --appendfsync always`) so that the data
   * survives SHUTDOWN and a start on the same port and dir. */
  constructor({ port, persist = true } = {}) {
    this.port = port;
    this.persist = persist;
    this.dir = tempDir('redis');
    this.child = null;
    this.starts = 0;
  }

  get logText() { return slurp(path.join(this.dir, 'redis.log')) + slurp(path.join(this.dir, 'redis.out')); }

  async start(timeoutMs = 10000) {
    if (this.child) throw new Error('redis already running');
    if (!this.port) this.port = await freePort();
    const args = [
      '--port', String(this.port), '--bind', '127.0.0.1', '--daemonize', 'no',
      '--save', '', '--dir', this.dir, '--logfile', path.join(this.dir, 'redis.log'),
      ...(this.persist ? ['--appendonly', 'yes', '--appendfsync', 'always'] : ['--appendonly', 'no']),
    ];
    const child = spawnLogged('redis-server', REDIS_BIN, args, path.join(this.dir, 'redis.out'));
    this.child = child;
    this.starts++;
    const ok = await waitUntil(async () => {
      if (exited(child)) throw new Error('exited');
      return (await redisCmd(this.port, 'PING')) === 'PONG';
    }, timeoutMs, 30);
    if (!ok) {
      const why = exited(child) ? 'exited at start' : `does not answer PING within ${timeoutMs} ms`;
      await this.kill();
      throw new Error(`redis-server on port ${this.port} ${why}:\n${this.logText}`);
    }
    return this;
  }

  /** The Redis way to stop: `SHUTDOWN` (the AOF is flushed), then wait for the
   * process to exit. Returns ms it took. */
  async shutdown(timeoutMs = 10000) {
    if (!this.child) return 0;
    const t0 = Date.now();
    try {
      const c = await RedisConn.connect(this.port);
      await c.cmdTimeout(timeoutMs, 'SHUTDOWN').catch(() => {}); // the connection just closes
      c.close();
    } catch { /* fall through to the signal */ }
    const gone = await waitExit(this.child, timeoutMs);
    await stopGroup(this.child, 'SIGTERM', 2000);
    this.child = null;
    if (!gone) throw new Error(`redis-server ${this.port} did not exit after SHUTDOWN`);
    return Date.now() - t0;
  }

  async restart() {
    const down = await this.shutdown();
    await this.start();
    return down;
  }

  async kill() {
    if (!this.child) return;
    await stopGroup(this.child, 'SIGTERM', 5000);
    this.child = null;
  }

  async stop() { await this.kill(); }

  cmd(...args) { return redisCmd(this.port, ...args); }

  /** FUNCTION LOAD REPLACE of redis/sse.lua (what the workers also do). */
  async loadFunction() {
    const code = fs.readFileSync(SSE_LUA, 'utf8');
    return this.cmd('FUNCTION', 'LOAD', 'REPLACE', code);
  }

  publish(channel, payload) { return this.cmd('PUBLISH', channel, payload); }

  /** FCALL sse_publish 0 channel payload ...options: the event id (number). */
  ssePublish(channel, payload, ...options) {
    return this.cmd('FCALL', 'sse_publish', '0', channel, payload, ...options);
  }

  /** { channel: subscribers } (each nginx worker counts once). */
  async numsub(...channels) {
    const r = await this.cmd('PUBSUB', 'NUMSUB', ...channels);
    const out = {};
    for (let i = 0; i < r.length; i += 2) out[r[i]] = Number(r[i + 1]);
    return out;
  }

  async numpat() { return Number(await this.cmd('PUBSUB', 'NUMPAT')); }

  /** Waits until every channel has at least one subscriber (a worker). */
  waitSubscribed(channels, timeoutMs = 5000) {
    return waitUntil(async () => {
      const n = await this.numsub(...channels);
      return channels.every((c) => n[c] >= 1);
    }, timeoutMs, 25);
  }
}

/**
 * A steady publisher in this process: `rate` messages per second over all
 * channels together, round robin, payload JSON {"ch":channel,"n":n} with n
 * counting from 1 per channel. mode 'fcall' (FCALL sse_publish, the default)
 * or 'publish' (plain PUBLISH).
 *
 * Like a service, it retries a message that certainly failed (no connection,
 * error reply such as LOADING) every 50 ms until Redis takes it; a message
 * that was sent but whose reply never came (connection lost) is recorded as
 * unknown and not retried (Redis may or may not have run it).
 *
 * stop() ends it and returns the results: accepted [{ch, n, id, t}] in publish
 * order, unknown [{ch, n, t}], failures (attempts that failed), failedFirst,
 * failedLast (times), perChannel {ch: last n accepted or unknown}.
 */
export function startPublisher({ port, channels, rate = 100, mode = 'fcall', options = [], payload } = {}) {
  const res = { accepted: [], unknown: [], failures: 0, failedFirst: null, failedLast: null, lastError: null };
  const counters = new Map(channels.map((c) => [c, 0]));
  let stopping = false;
  let conn = null;
  const mk = payload || ((ch, n) => JSON.stringify({ ch, n }));
  const getPort = typeof port === 'function' ? port : () => port;

  const loop = (async () => {
    let k = 0;
    let next = Date.now();
    while (!stopping) {
      const now = Date.now();
      if (next > now) await sleep(next - now);
      if (stopping) break;
      if (Date.now() - next > 200) next = Date.now(); // far behind (an outage): no burst
      const ch = channels[k % channels.length];
      const n = counters.get(ch) + 1;
      let sent = false;
      try {
        if (!conn || conn.closed) conn = await RedisConn.connect(getPort(), 1000);
        const args = mode === 'fcall'
          ? ['FCALL', 'sse_publish', '0', ch, mk(ch, n), ...options]
          : ['PUBLISH', ch, mk(ch, n)];
        sent = true;
        const reply = await conn.cmdTimeout(3000, ...args);
        const t = Date.now();
        if (mode === 'fcall') {
          if (typeof reply !== 'number') throw Object.assign(new Error(`unexpected reply ${reply}`), { reply: true });
          res.accepted.push({ ch, n, id: String(reply), t });
        } else {
          res.accepted.push({ ch, n, id: undefined, t, receivers: reply });
        }
      } catch (e) {
        const t = Date.now();
        if (sent && !e.reply && e.sent !== false) {
          // Sent, then the connection broke: Redis may have run it.
          res.unknown.push({ ch, n, t });
          if (conn) conn.close();
          conn = null;
        } else {
          res.failures++;
          res.failedFirst ??= t;
          res.failedLast = t;
          res.lastError = e.message;
          if (!e.reply && conn) { conn.close(); conn = null; }
          next = Date.now() + 50;
          continue; // the same message again
        }
      }
      counters.set(ch, n);
      k++;
      next += 1000 / rate;
    }
    if (conn) conn.close();
  })();

  return {
    results: res,
    counters,
    /** Stops after the message in progress; returns the results. */
    async stop() {
      stopping = true;
      await within(loop, 5000);
      res.perChannel = Object.fromEntries(counters);
      return res;
    },
  };
}
