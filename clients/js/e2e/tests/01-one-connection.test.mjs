// Five components on four subscriptions (two share a channel, one is a
// pattern) open exactly ONE stream connection: counted server side (the
// access log has one established /events line, one connection is held) and
// page side (one /events request, client status open, the four subscriptions
// active); every component then receives its channel's events.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { scenario, skipReason, newContext, openStreams, sleep, waitUntil } from '../lib/stack.mjs';

const skip = skipReason() ?? false;

const MOUNT = [
  { id: 'c1', sub: 'logs:w1:f1' },
  { id: 'c2', sub: 'logs:w1:f1' },
  { id: 'c3', sub: 'metrics:cpu' },
  { id: 'c4', sub: 'alerts:bob' },
  { id: 'c5', sub: 'dashboards:*' },
];
const SUBS = ['alerts:bob', 'dashboards:*', 'logs:w1:f1', 'metrics:cpu'];

test('five components on four channels share one stream connection', { skip, timeout: 60000 }, async (t) => {
  await scenario(t, {}, async (stack) => {
    const ctx = await newContext(stack, 'bob');
    const t0 = Date.now();
    const app = await stack.open(ctx, { mount: MOUNT });
    const live = await app.waitViews(MOUNT.map((m) => m.id), 'live', 8000);
    assert.ok(live, `all five components live within 8 s: ${JSON.stringify((await app.snapshot(false)).views)}`);
    t.diagnostic(`all live ${Date.now() - t0} ms after opening the page`);
    await sleep(1000); // any late reconnection would show up now

    const streams = stack.nginx.streams();
    assert.equal(streams.length, 1,
      `exactly one established /events stream in the access log, got ${JSON.stringify(streams.map((s) => s.uri))}`);
    assert.deepEqual(streams[0].channels.split(',').sort(), SUBS, 'the stream asked for the four subscriptions');
    assert.equal(stack.nginx.refusedStreams().length, 0, 'no refused /events request');
    assert.equal(await openStreams(stack), 1, 'one connection held to nginx');
    assert.equal(app.requests.length, 1, `one /events request from the page: ${JSON.stringify(app.requests)}`);

    const snap = await app.snapshot(false);
    assert.equal(snap.status, 'open', 'client status');
    assert.deepEqual(snap.active, SUBS, 'client.activeSubscriptions (sorted)');

    // Each component gets its channel's events (c1 and c2 the same ones).
    const ids = {};
    for (const ch of ['logs:w1:f1', 'metrics:cpu', 'alerts:bob', 'dashboards:7', 'dashboards:8']) {
      ids[ch] = String(await stack.redis.ssePublish(ch, JSON.stringify({ ch, n: 1 })));
    }
    const want = { c1: ['logs:w1:f1'], c2: ['logs:w1:f1'], c3: ['metrics:cpu'], c4: ['alerts:bob'], c5: ['dashboards:7', 'dashboards:8'] };
    const got = await waitUntil(async () => {
      const s = await app.snapshot(true);
      return Object.entries(want).every(([id, chs]) => (s.seen[id] || []).length >= chs.length) ? s : false;
    }, 5000);
    const s = got || (await app.snapshot(true));
    for (const [id, chs] of Object.entries(want)) {
      const seen = (s.seen[id] || []).map((r) => [r.channel, r.id, r.data && r.data.n]);
      assert.deepEqual(seen, chs.map((ch) => [ch, ids[ch], 1]), `${id} received exactly its events`);
    }
    assert.equal(stack.nginx.streams().length, 1, 'still one stream connection after the events');
    const dom = await app.domOf('c5');
    assert.equal(dom.status, 'live');
    assert.equal(dom.count, 2, 'the DOM shows what c5 received');
  });
});
