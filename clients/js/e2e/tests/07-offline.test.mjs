// The browser goes offline (context.setOffline(true)) for 2 s while events are
// published with history, then online again: the page reconnects and resumes
// from its last event id, losing and duplicating nothing.
//
// Chromium's offline emulation fails new requests but leaves an established
// streaming response alone (events keep flowing). A real network drop also
// kills the open connection, so while offline the test aborts the browser's
// connections to nginx with `ss -K` (as root); the client must then retry
// (failing while offline) and get back once online.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { scenario, skipReason, newContext, sleep, waitUntil } from '../lib/stack.mjs';
import { startPublisher } from '../lib/redis.mjs';
import { killClientSockets } from '../lib/procs.mjs';
import { exactlyOnce, describe } from '../lib/check.mjs';

const skip = skipReason() ?? false;

const MOUNT = [
  { id: 'o1', sub: 'logs:w1:f1' },
  { id: 'o2', sub: 'metrics:cpu' },
];

test('offline then online: reconnects and resumes with no loss', { skip, timeout: 60000 }, async (t) => {
  await scenario(t, {}, async (stack) => {
    const ctx = await newContext(stack, 'bob');
    const app = await stack.open(ctx, { mount: MOUNT });
    assert.ok(await app.waitViews(MOUNT.map((m) => m.id), 'live', 8000), 'components live');
    assert.ok(await stack.redis.waitSubscribed(MOUNT.map((m) => m.sub), 5000), 'channels subscribed in Redis');

    const pub = startPublisher({ port: stack.redis.port, channels: MOUNT.map((m) => m.sub), rate: 60 });
    await sleep(1000);
    const streamsBefore = stack.nginx.streams().length;
    const toff = Date.now();
    await ctx.setOffline(true);
    const killed = await killClientSockets(stack.nginx.port);
    const wentDown = await app.waitFor((s) => s.status !== 'open', 3000, 20);
    t.diagnostic(`offline: ${killed} connection(s) cut; client status ${wentDown ? `${wentDown.status} after ${Date.now() - toff} ms` : 'stayed open for 3 s'}`);
    assert.ok(killed >= 1, 'the stream connection was cut');
    assert.ok(wentDown, 'the client noticed the connection was lost');
    await sleep(Math.max(0, 2000 - (Date.now() - toff)));
    const whileOffline = stack.nginx.streams().length - streamsBefore;
    const attempts = app.requests.filter((r) => r.t > toff).length;
    const ton = Date.now();
    await ctx.setOffline(false);
    const reopened = await waitUntil(() => stack.nginx.streams().length > streamsBefore, 15000, 20);
    t.diagnostic(`offline 2 s: ${attempts} attempts (failing), ${whileOffline} streams established meanwhile; `
      + `online: ${reopened ? `new stream ${Date.now() - ton} ms after going online` : 'NO new stream within 15 s'}`);
    assert.equal(whileOffline, 0, 'no stream could open while offline');
    assert.ok(reopened, 'a new stream opened once online');
    await sleep(1000);
    const res = await pub.stop();

    const last = res.perChannel;
    await waitUntil(async () => {
      const s = await app.snapshot(true);
      return MOUNT.every((c) => (s.seen[c.id] || []).some((r) => r.data && r.data.n >= last[c.sub]));
    }, 8000, 100);
    const snap = await app.snapshot(true);
    t.diagnostic(`status log: ${JSON.stringify(snap.statusLog.map((s) => [s.t - toff, s.s, s.lastEventId]))}`);
    t.diagnostic(`/events requests: ${JSON.stringify(app.requests.map((r) => [r.t - toff, r.lei]))}`);
    const results = MOUNT.map((c) => [c.id, exactlyOnce(snap.seen[c.id] || [], res, c.sub)]);
    for (const [id, r] of results) t.diagnostic(describe(id, r));
    assert.equal(snap.status, 'open', 'the client is open again');
    assert.deepEqual(results.filter(([, r]) => !r.ok).map(([id, r]) => describe(id, r)), [], 'every event exactly once');
  });
});
