// nginx reload and a Redis restart (AOF; SHUTDOWN, then redis-server again on
// the same port and dir) while the page is open and a publisher runs with
// FCALL sse_publish, retrying what failed: every event Redis accepted reaches
// each component exactly once, in order. Events whose reply was lost (sent
// just as Redis went down) may be there at most once.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { scenario, skipReason, newContext, sleep, waitUntil } from '../lib/stack.mjs';
import { startPublisher } from '../lib/redis.mjs';
import { exactlyOnce, describe } from '../lib/check.mjs';

const skip = skipReason() ?? false;

const MOUNT = [
  { id: 's1', sub: 'logs:w1:f1' },
  { id: 's2', sub: 'metrics:cpu' },
  { id: 's3', sub: 'dashboards:7' },
  { id: 's4', sub: 'alerts:bob', kind: 'listener' },
];

test('nginx reload and redis restart lose and duplicate nothing', { skip, timeout: 90000 }, async (t) => {
  await scenario(t, {}, async (stack) => {
    const ctx = await newContext(stack, 'bob');
    const app = await stack.open(ctx, { mount: MOUNT });
    assert.ok(await app.waitViews(MOUNT.map((m) => m.id), 'live', 8000), 'components live');
    assert.ok(await stack.redis.waitSubscribed(MOUNT.map((m) => m.sub), 5000), 'channels subscribed in Redis');

    const pub = startPublisher({ port: stack.redis.port, channels: MOUNT.map((m) => m.sub), rate: 100 });
    await sleep(1000);

    // 1. nginx reload: the old workers end the stream, the page reconnects to the new ones.
    const before = stack.nginx.streams().length;
    const tr = Date.now();
    const { oldWorkers, ms } = await stack.nginx.reload();
    const reconnected = await waitUntil(() => stack.nginx.streams().length > before, 8000, 20);
    t.diagnostic(`reload: new workers after ${ms} ms; page reconnected ${reconnected ? `${Date.now() - tr} ms after the reload` : 'NOT within 8 s'}`);
    assert.ok(reconnected, 'the page opened a new stream after the reload');
    assert.ok(await stack.nginx.waitGone(oldWorkers, 8000), 'the old workers exited (no stream kept them)');
    await sleep(1000);

    // 2. Redis restart on the same port and dir.
    const ts = Date.now();
    const downMs = await stack.redis.shutdown();
    await sleep(300);
    await stack.redis.start();
    const back = await waitUntil(async () => (await stack.redis.numsub('sse:control'))['sse:control'] >= 2, 10000, 50);
    t.diagnostic(`redis restart: down in ${downMs} ms, up again ${Date.now() - ts} ms after SHUTDOWN; workers back ${back ? 'yes' : 'NO'}`);
    assert.ok(back, 'nginx workers reconnected to redis');
    await sleep(1500);

    const res = await pub.stop();
    t.diagnostic(`published ${res.accepted.length} accepted, ${res.unknown.length} unknown (reply lost), `
      + `${res.failures} failed attempts (retried) from ${res.failedFirst ? res.failedFirst - ts : '-'} to ${res.failedLast ? res.failedLast - ts : '-'} ms after SHUTDOWN`);

    const last = res.perChannel;
    await waitUntil(async () => {
      const s = await app.snapshot(true);
      return MOUNT.every((c) => (s.seen[c.id] || []).some((r) => r.data && r.data.n >= last[c.sub]));
    }, 10000, 100);
    const snap = await app.snapshot(true);
    const results = MOUNT.map((c) => [c.id, exactlyOnce(snap.seen[c.id] || [], res, c.sub)]);
    for (const [id, r] of results) t.diagnostic(describe(id, r));
    t.diagnostic(`${stack.nginx.streams().length} streams established in all; status log ${JSON.stringify(snap.statusLog.map((s) => [s.t - tr, s.s]))}`);
    assert.deepEqual(results.filter(([, r]) => !r.ok).map(([id, r]) => describe(id, r)), [], 'every accepted event exactly once per component');
  });
});
