// @nginx-sse/publisher (Node, no browser) against a real redis-server and a
// real nginx with the module (the harness's nginx.conf: auth_request, users
// from the auth service's cookie, sse_history on): events published with the
// library arrive as published on raw HTTP event streams, plain, with an
// audience (`to`), and with history (resumed with Last-Event-ID); a publish
// with history loads sse_publish when Redis lacks it.
//
// Uses the built package (dist/, through the workspace link): `npm run build`
// first (`npm test` does).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { AuthService } from '../lib/auth.mjs';
import { Nginx, NGINX_BIN, SSE_MODULE } from '../lib/nginx.mjs';
import { killAll, removeTempDirs, tempDir, waitUntil } from '../lib/procs.mjs';
import { RedisServer, REDIS_BIN } from '../lib/redis.mjs';

function onPath(bin) {
  if (bin.includes('/')) return fs.existsSync(bin);
  return (process.env.PATH || '').split(':').some((d) => d && fs.existsSync(path.join(d, bin)));
}

let lib = null;
try {
  lib = await import('@nginx-sse/publisher');
} catch { /* not built: skipped below */ }

function skipReason() {
  if (!fs.existsSync(SSE_MODULE)) return `nginx module not built: ${SSE_MODULE} does not exist (run 'make build' or set SSE_MODULE)`;
  try { fs.accessSync(NGINX_BIN, fs.constants.X_OK); } catch { return `nginx binary ${NGINX_BIN} is not executable (set NGINX_BIN)`; }
  if (!onPath(REDIS_BIN)) return `${REDIS_BIN} not found (set REDIS_BIN)`;
  if (!lib) return '@nginx-sse/publisher is not built (npm run build in clients/js)';
  return null;
}
const skip = skipReason() ?? false;

const GRANTS = { u1: 'pub:**', u2: 'pub:**', 'org:u3': 'pub:**' };

/** One event stream on /events (GET, cookie user=…), parsed the way an
 * EventSource does: events { event, data, id }. */
class Stream {
  constructor(port, { channels, user, lastEventId }) {
    this.events = [];
    this.waiters = [];
    this.ended = false;
    this.buf = '';
    this.cur = { event: 'message', data: [], id: null, any: false };
    const headers = { Accept: 'text/event-stream', Cookie: `user=${encodeURIComponent(user)}` };
    if (lastEventId != null) headers['Last-Event-ID'] = String(lastEventId);
    this.opened = new Promise((resolve, reject) => {
      this.req = http.get({ host: '127.0.0.1', port, path: `/events?channels=${encodeURIComponent(channels)}`, headers, agent: false }, (res) => {
        this.status = res.statusCode;
        res.setEncoding('utf8');
        res.on('data', (d) => this.#feed(d));
        res.on('end', () => { this.ended = true; this.#wake(); });
        res.on('error', () => { this.ended = true; this.#wake(); });
        resolve(this);
      });
      this.req.on('error', reject);
    });
  }

  #feed(chunk) {
    this.buf += chunk;
    let nl;
    while ((nl = this.buf.search(/\r\n|\n|\r/)) >= 0) {
      const line = this.buf.slice(0, nl);
      this.buf = this.buf.slice(nl + (this.buf.startsWith('\r\n', nl) ? 2 : 1));
      if (line === '') {
        // The session token (the harness has sse_session on) is not a published event.
        if (this.cur.any && this.cur.data.length && this.cur.event !== 'sse-session') {
          this.events.push({ event: this.cur.event, data: this.cur.data.join('\n'), id: this.cur.id });
        }
        this.cur = { event: 'message', data: [], id: null, any: false };
        continue;
      }
      if (line.startsWith(':')) continue;
      const i = line.indexOf(':');
      const field = i < 0 ? line : line.slice(0, i);
      let value = i < 0 ? '' : line.slice(i + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      this.cur.any = true;
      if (field === 'data') this.cur.data.push(value);
      else if (field === 'event' || field === 'id') this.cur[field] = value;
    }
    this.#wake();
  }

  #wake() { for (const w of this.waiters.splice(0)) w(); }

  /** Waits for at least n events (5 s); returns the first n. */
  async take(n, timeoutMs = 5000) {
    const deadline = Date.now() + timeoutMs;
    while (this.events.length < n && !this.ended && Date.now() < deadline) {
      await new Promise((r) => {
        const t = setTimeout(r, deadline - Date.now());
        this.waiters.push(() => { clearTimeout(t); r(); });
      });
    }
    assert.ok(this.events.length >= n, `${n} events expected, got ${JSON.stringify(this.events)}${this.ended ? ' (stream ended)' : ''}`);
    return this.events.slice(0, n);
  }

  close() { this.req.destroy(); }
}

async function openStream(stack, opts) {
  const s = await new Stream(stack.nginx.port, opts).opened;
  stack.streams.push(s);
  assert.equal(s.status, 200, `GET /events?channels=${opts.channels} as ${opts.user}`);
  return s;
}

async function subscribed(stack, channel) {
  assert.ok(await stack.redis.waitSubscribed([channel], 5000), `nginx subscribed to ${channel}`);
}

const functionLoaded = async (redis) => (await redis.cmd('FUNCTION', 'LIST', 'LIBRARYNAME', 'nginx_sse')).length > 0;

test('@nginx-sse/publisher against redis + nginx', { skip, timeout: 60000 }, async (t) => {
  const { publish, createPublisher } = lib;
  const { createClient } = await import('redis');
  const stack = { streams: [] };
  try {
    stack.redis = await new RedisServer({ persist: false }).start();
    stack.auth = await new AuthService(GRANTS).start();
    stack.nginx = await new Nginx({
      redisPort: stack.redis.port, authPort: stack.auth.port, pagesDir: tempDir('pages'), workers: 1,
    }).start();
    stack.client = createClient({ url: `redis://127.0.0.1:${stack.redis.port}` });
    stack.client.on('error', (e) => t.diagnostic(`redis client: ${e.message}`));
    await stack.client.connect();
    const r = stack.client;

    await t.test('plain publish arrives as published', async () => {
      const ch = 'pub:plain';
      const s = await openStream(stack, { channels: ch, user: 'u1' });
      await subscribed(stack, ch);
      assert.equal(await publish(r, ch, { level: 'INFO', msg: 'loaded 12,345 rows', n: 1 }), 1);
      assert.equal(await publish(r, ch, 'two\nlines'), 1);
      assert.equal(await publish(r, ch, Buffer.from('\x1e starts with a record separator', 'latin1')), 1);
      assert.equal(await publish(r, ch, ''), 1);
      assert.deepEqual((await s.take(4)).map((e) => [e.event, e.data, e.id]), [
        [ch, '{"level":"INFO","msg":"loaded 12,345 rows","n":1}', null],
        [ch, 'two\nlines', null],
        [ch, '\x1e starts with a record separator', null],
        [ch, '', null],
      ]);
      s.close();
    });

    await t.test('an audience reaches only its users', async () => {
      const ch = 'pub:to';
      const users = ['u1', 'u2', 'org:u3'];
      const streams = Object.fromEntries(await Promise.all(users.map(async (u) => [u, await openStream(stack, { channels: ch, user: u })])));
      await subscribed(stack, ch);
      await publish(r, ch, 'A', { to: ['u1', 'org:u3'] });
      await publish(r, ch, 'B', { to: 'u2' });
      await publish(r, ch, { end: true }); // everyone
      const want = { u1: ['A', '{"end":true}'], u2: ['B', '{"end":true}'], 'org:u3': ['A', '{"end":true}'] };
      for (const u of users) {
        assert.deepEqual((await streams[u].take(2)).map((e) => e.data), want[u], u);
        streams[u].close();
      }
    });

    await t.test('history: ids, and resume with Last-Event-ID', async () => {
      const ch = 'pub:hist';
      assert.ok(await waitUntil(() => functionLoaded(stack.redis), 10000), 'the workers load sse.lua when they connect');
      let s = await openStream(stack, { channels: ch, user: 'u1' });
      await subscribed(stack, ch);
      const id1 = await publish(r, ch, { n: 1 }, { history: true });
      assert.ok(Number.isSafeInteger(id1) && id1 >= 1, `id ${id1}`);
      assert.deepEqual((await s.take(1)).map((e) => [e.event, e.id, e.data]), [[ch, String(id1), '{"n":1}']]);
      s.close();

      // while the browser is away
      const id2 = await publish(r, ch, { n: 2 }, { history: true });
      const id3 = await publish(r, ch, 'for u1', { history: true, to: ['u1'] });
      const id4 = await publish(r, ch, 'for u2', { history: true, to: 'u2' });
      const id5 = await publish(r, ch, Buffer.from('\x1eraw', 'latin1'), { history: true, maxlen: 100, ttl: 3600 });
      assert.ok(id1 < id2 && id2 < id3 && id3 < id4 && id4 < id5, `${[id1, id2, id3, id4, id5]}`);

      s = await openStream(stack, { channels: ch, user: 'u1', lastEventId: id1 });
      assert.deepEqual((await s.take(3)).map((e) => [e.id, e.data]), [
        [String(id2), '{"n":2}'], [String(id3), 'for u1'], [String(id5), '\x1eraw'],
      ]);
      await subscribed(stack, ch);
      const id6 = await publish(r, ch, 'live again', { history: true });
      assert.deepEqual((await s.take(4)).slice(3).map((e) => [e.id, e.data]), [[String(id6), 'live again']]);
      s.close();
    });

    await t.test('history loads sse_publish when Redis lacks it', async () => {
      const ch = 'pub:load';
      assert.ok(await waitUntil(() => functionLoaded(stack.redis), 10000));
      await stack.redis.cmd('FUNCTION', 'DELETE', 'nginx_sse');
      assert.equal(await functionLoaded(stack.redis), false);
      const s = await openStream(stack, { channels: ch, user: 'u1' });
      await subscribed(stack, ch);
      const id = await publish(r, ch, { loaded: true }, { history: true });
      assert.equal(await functionLoaded(stack.redis), true, 'publish loaded sse.lua');
      assert.deepEqual((await s.take(1)).map((e) => [e.id, e.data]), [[String(id), '{"loaded":true}']]);
      s.close();
    });

    await t.test('createPublisher; history options reach Redis', async () => {
      const p = await createPublisher(`redis://127.0.0.1:${stack.redis.port}`);
      try {
        const ch = 'pub:opts';
        const ids = [];
        for (let i = 0; i < 3; i++) ids.push(await p.publish(ch, { i }, { history: true, prefix: 'app2', maxlen: 2, ttl: 100 }));
        assert.deepEqual(ids, [1, 2, 3], 'app2 has its own sequence');
        assert.equal(await stack.redis.cmd('XLEN', `app2:h:${ch}`), 2);
        const ttl = await stack.redis.cmd('TTL', `app2:h:${ch}`);
        assert.ok(ttl > 0 && ttl <= 100, `ttl ${ttl}`);
        assert.equal(await stack.redis.cmd('HGET', 'app2:last', ch), '3');
        const entries = await stack.redis.cmd('XRANGE', `app2:h:${ch}`, '-', '+');
        assert.deepEqual(entries.map(([id, f]) => [id, f[f.indexOf('d') + 1]]), [['2-0', '{"i":1}'], ['3-0', '{"i":2}']]);
        assert.equal(await p.publish(ch, 'plain, nobody listening'), 0);
        await assert.rejects(p.publish('sse:control', 'revoke u1'), { name: 'PublishArgumentError', field: 'channel' });
      } finally {
        await p.close();
      }
    });

    const alerts = stack.nginx.newAlerts();
    assert.deepEqual(alerts, [], 'no [alert]/[emerg] or crashed worker in error.log');
  } finally {
    for (const s of stack.streams) s.close();
    if (stack.client?.isOpen) await stack.client.close().catch(() => {});
    await stack.nginx?.stop().catch(() => {});
    await stack.auth?.stop().catch(() => {});
    await stack.redis?.stop().catch(() => {});
    killAll();
    removeTempDirs();
  }
});
