// alice asks for dashboards:2, which her grants do not cover: that component
// shows `denied` naming it, the client keeps it out of its request, and her
// granted channels keep streaming (history on: nothing lost or duplicated
// across the refused request and the reconnection without it).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { scenario, skipReason, newContext, sleep, waitUntil } from '../lib/stack.mjs';
import { startPublisher } from '../lib/redis.mjs';
import { exactlyOnce, describe } from '../lib/check.mjs';

const skip = skipReason() ?? false;

const GRANTED = [
  { id: 'g1', sub: 'logs:w1:f1' },
  { id: 'g2', sub: 'metrics:cpu' },
  { id: 'g3', sub: 'alerts:alice' },
  { id: 'g4', sub: 'dashboards:1' },
];
const DENIED = { id: 'd1', sub: 'dashboards:2' };

test('an ungranted channel is denied by name while the granted ones stream', { skip, timeout: 60000 }, async (t) => {
  await scenario(t, {}, async (stack) => {
    const ctx = await newContext(stack, 'alice');
    const app = await stack.open(ctx, { mount: GRANTED });
    assert.ok(await app.waitViews(GRANTED.map((m) => m.id), 'live', 8000), 'granted components live');
    assert.ok(await stack.redis.waitSubscribed(GRANTED.map((m) => m.sub), 5000), 'channels subscribed in Redis');

    const pub = startPublisher({ port: stack.redis.port, channels: [...GRANTED.map((m) => m.sub), DENIED.sub], rate: 100 });
    await sleep(700);
    const tm = Date.now();
    await app.mount(DENIED);
    const denied = await app.waitViews([DENIED.id], 'denied', 8000);
    t.diagnostic(`dashboards:2 ${denied ? `denied ${Date.now() - tm} ms after mounting` : 'NOT denied within 8 s'}`);
    await sleep(1000);
    const res = await pub.stop();

    const views = await app.views();
    assert.equal(views[DENIED.id]?.status, 'denied', `the component on dashboards:2 is denied: ${JSON.stringify(views[DENIED.id])}`);
    const dom = await app.domOf(DENIED.id);
    assert.equal(dom.status, 'denied', 'its DOM shows denied');
    assert.match(dom.text, /dashboards:2/, 'its DOM names the channel');
    const st = await app.subStatus(DENIED.sub);
    assert.equal(st?.status, 'denied', `client.subscriptionStatus('dashboards:2'): ${JSON.stringify(st)}`);
    t.diagnostic(`denial reason: ${JSON.stringify(st?.reason)}; view error: ${JSON.stringify(views[DENIED.id]?.error)}`);

    const refused = stack.nginx.refusedStreams();
    assert.ok(refused.some((l) => l.status === 403 && l.channels.split(',').includes('dashboards:2')),
      `the server refused a request naming dashboards:2 (403): ${JSON.stringify(refused.map((l) => [l.status, l.channels]))}`);
    const snap = await app.snapshot(true);
    assert.ok(!snap.active.includes(DENIED.sub), `dashboards:2 is not among the active subscriptions: ${snap.active}`);
    const lastStream = stack.nginx.streams().at(-1);
    assert.ok(!lastStream.channels.split(',').includes(DENIED.sub), `the open stream does not ask for it: ${lastStream.channels}`);
    assert.equal((snap.seen[DENIED.id] || []).length, 0, 'the denied component received nothing');

    const last = res.perChannel;
    await waitUntil(async () => {
      const s = await app.snapshot(true);
      return GRANTED.every((c) => (s.seen[c.id] || []).some((r) => r.data && r.data.n >= last[c.sub]));
    }, 8000, 100);
    const snap2 = await app.snapshot(true);
    const results = GRANTED.map((c) => [c.id, exactlyOnce(snap2.seen[c.id] || [], res, c.sub)]);
    for (const [id, r] of results) t.diagnostic(describe(id, r));
    assert.deepEqual(results.filter(([, r]) => !r.ok).map(([id, r]) => describe(id, r)), [], 'granted channels: every event exactly once');
    t.diagnostic(`/events requests: ${JSON.stringify(app.requests.map((r) => [r.t - tm, r.channels, r.lei]))}`);
  });
});
