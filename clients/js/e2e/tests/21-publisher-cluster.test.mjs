// @nginx-sse/publisher in Redis Cluster mode (Node, no browser, no nginx)
// against a real cluster of three masters on loopback, through a node-redis
// `createCluster` client: history publishes get per-channel ids 1, 2, 3 in
// `<prefix>:{<channel>}:h` on the master that serves the channel; plain
// publishes are SPUBLISH, received by a sharded subscriber (SSUBSCRIBE, what
// nginx subscribes with) on that master; `sharded: false` is a plain PUBLISH;
// sse.lua is loaded on every master.
//
// Uses the built package (dist/, through the workspace link): `npm run build`
// first (`npm test` does).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { RedisCluster, REDIS_CLI } from '../lib/cluster.mjs';
import { killAll, removeTempDirs, waitUntil } from '../lib/procs.mjs';
import { REDIS_BIN } from '../lib/redis.mjs';

function onPath(bin) {
  if (bin.includes('/')) return fs.existsSync(bin);
  return (process.env.PATH || '').split(':').some((d) => d && fs.existsSync(path.join(d, bin)));
}

let lib = null;
try {
  lib = await import('@nginx-sse/publisher');
} catch { /* not built: skipped below */ }

function skipReason() {
  if (!onPath(REDIS_BIN)) return `${REDIS_BIN} not found (set REDIS_BIN)`;
  if (!onPath(REDIS_CLI)) return `${REDIS_CLI} not found (set REDIS_CLI)`;
  if (!lib) return '@nginx-sse/publisher is not built (npm run build in clients/js)';
  return null;
}
const skip = skipReason() ?? false;

const FUNCTION = 'nginx_sse';

/** Messages received by one subscriber, awaited one by one. */
class Inbox {
  constructor() { this.messages = []; }
  push = (message) => { this.messages.push(message); };
  async next(timeoutMs = 5000) {
    assert.ok(await waitUntil(() => this.messages.length > 0, timeoutMs, 10), `no message within ${timeoutMs} ms`);
    return this.messages.shift();
  }
}

test('@nginx-sse/publisher against a Redis Cluster', { skip, timeout: 60000 }, async (t) => {
  const { publish, loadFunction } = lib;
  const { createClient, createCluster } = await import('redis');
  const clients = [];
  const cluster = new RedisCluster();
  const started = Date.now();
  try {
    await cluster.start();
    t.diagnostic(`cluster of 3 masters up in ${Date.now() - started} ms`);
    const rc = createCluster({ rootNodes: [{ url: `redis://127.0.0.1:${cluster.ports[0]}` }] });
    rc.on('error', (e) => t.diagnostic(`cluster client: ${e.message}`));
    clients.push(rc);
    await rc.connect();

    const loaded = async (port) => (await cluster.cmd(port, 'FUNCTION', 'LIST', 'LIBRARYNAME', FUNCTION)).length > 0;
    const deleteFunction = async () => {
      for (const p of cluster.ports) if (await loaded(p)) await cluster.cmd(p, 'FUNCTION', 'DELETE', FUNCTION);
    };
    /** A node-redis client on one node, for SSUBSCRIBE / SUBSCRIBE there. */
    const subscriber = async (port) => {
      const c = createClient({ url: `redis://127.0.0.1:${port}` });
      c.on('error', (e) => t.diagnostic(`subscriber ${port}: ${e.message}`));
      clients.push(c);
      return c.connect();
    };

    await t.test('history: per-channel ids, entries on the master of the channel', async () => {
      await deleteFunction(); // the first publish loads it, on every master
      const owners = await cluster.oneChannelPerMaster('hist');
      const channels = Object.values(owners);
      const ids = Object.fromEntries(channels.map((ch) => [ch, []]));
      for (let n = 1; n <= 3; n++) {
        for (const ch of channels) ids[ch].push(await publish(rc, ch, { n }, { history: true }));
      }
      assert.deepEqual(ids, Object.fromEntries(channels.map((ch) => [ch, [1, 2, 3]])), 'one sequence per channel');
      for (const p of cluster.ports) assert.ok(await loaded(p), `sse.lua on ${p}`);

      for (const [port, ch] of Object.entries(owners)) {
        const entries = await cluster.cmd(port, 'XRANGE', `sse:{${ch}}:h`, '-', '+');
        const field = (f, k) => f[f.indexOf(k) + 1];
        assert.deepEqual(entries.map(([id, f]) => [id, field(f, 'd'), field(f, 'p')]), [
          ['1-0', '{"n":1}', '0'], ['2-0', '{"n":2}', '1'], ['3-0', '{"n":3}', '2'],
        ], ch);
        assert.equal(await cluster.cmd(port, 'HGET', `sse:{${ch}}:s`, 'n'), '3');
        for (const other of cluster.ports) { // KEYS: the node's own keys, no MOVED
          const keys = (await cluster.cmd(other, 'KEYS', `sse:{${ch}}:*`)).sort();
          assert.deepEqual(keys, String(other) === port ? [`sse:{${ch}}:h`, `sse:{${ch}}:s`] : [], `${ch} on ${other}`);
        }
      }
    });

    await t.test('history options in a cluster', async () => {
      const [port, ch] = Object.entries(await cluster.oneChannelPerMaster('opts'))[0];
      const ids = [];
      for (let i = 0; i < 3; i++) {
        ids.push(await publish(rc, ch, `e${i}`, { history: true, prefix: 'app2', maxlen: 2, ttl: 100, to: ['u1', 'u2'] }));
      }
      assert.deepEqual(ids, [1, 2, 3], 'app2 has its own sequence');
      const key = `app2:{${ch}}:h`;
      assert.equal(await cluster.cmd(port, 'XLEN', key), 2);
      const ttl = await cluster.cmd(port, 'TTL', key);
      assert.ok(ttl > 0 && ttl <= 100, `ttl ${ttl}`);
      const entries = await cluster.cmd(port, 'XRANGE', key, '-', '+');
      assert.deepEqual(entries.map(([id, f]) => [id, f[f.indexOf('d') + 1], f[f.indexOf('t') + 1]]), [
        ['2-0', 'e1', 'u1,u2'], ['3-0', 'e2', 'u1,u2'],
      ]);
    });

    await t.test('a plain publish reaches a sharded subscriber on the master of the channel', async () => {
      for (const [port, ch] of Object.entries(await cluster.oneChannelPerMaster('live'))) {
        const inbox = new Inbox();
        await (await subscriber(Number(port))).sSubscribe(ch, inbox.push);
        assert.equal(await publish(rc, ch, { ch }), 1, 'SPUBLISH: the one subscriber of its shard');
        assert.equal(await inbox.next(), JSON.stringify({ ch }));
        await publish(rc, ch, 'only u1', { to: 'u1' });
        assert.equal(await inbox.next(), '\x1esse1 to=u1\nonly u1');
        const id = await publish(rc, ch, 'kept', { history: true });
        assert.equal(await inbox.next(), `\x1esse1 id=${id}\nkept`);
      }
    });

    await t.test('sharded: false is a plain PUBLISH', async () => {
      const [port, ch] = Object.entries(await cluster.oneChannelPerMaster('fallback'))[0];
      const sharded = new Inbox();
      const plain = new Inbox();
      await (await subscriber(Number(port))).sSubscribe(ch, sharded.push);
      await (await subscriber(Number(port))).subscribe(ch, plain.push);
      await publish(rc, ch, 'to SUBSCRIBE', { sharded: false });
      assert.equal(await plain.next(), 'to SUBSCRIBE');
      await publish(rc, ch, 'to SSUBSCRIBE');
      assert.equal(await sharded.next(), 'to SSUBSCRIBE', 'PUBLISH reached no sharded subscriber');
    });

    await t.test('loadFunction loads sse.lua on every master', async () => {
      await deleteFunction();
      for (const p of cluster.ports) assert.equal(await loaded(p), false);
      assert.equal(await loadFunction(rc), FUNCTION);
      for (const p of cluster.ports) assert.ok(await loaded(p), `sse.lua on ${p}`);
    });
  } finally {
    for (const c of clients) if (c.isOpen) await c.close().catch(() => {});
    await cluster.stop().catch(() => {});
    killAll();
    removeTempDirs();
  }
});
