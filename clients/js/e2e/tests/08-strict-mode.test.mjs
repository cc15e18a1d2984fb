// React StrictMode (development build: effects and renders run twice) with
// <SSEProvider url="/events">: one client, one stream connection, no event
// twice; a component that unmounts and remounts gets its state back, whether
// its channel stayed on the connection (another component wants it) or was
// taken off and requested again.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { scenario, skipReason, newContext, openStreams, sleep, waitUntil } from '../lib/stack.mjs';
import { exactlyOnce, describe } from '../lib/check.mjs';

const skip = skipReason() ?? false;

const MOUNT = [
  { id: 'm1', sub: 'logs:w1:f1' },
  { id: 'm2', sub: 'metrics:cpu' },
  { id: 'm3', sub: 'metrics:cpu', kind: 'listener' },
];

test('StrictMode: one connection; a remounted component keeps its state', { skip, timeout: 60000 }, async (t) => {
  await scenario(t, {}, async (stack) => {
    const ctx = await newContext(stack, 'bob');
    const app = await stack.open(ctx, { strict: true, provider: 'url', mount: MOUNT });
    assert.ok(await app.waitViews(MOUNT.map((m) => m.id), 'live', 8000), 'components live');
    await sleep(1000);
    const snap0 = await app.snapshot(false);
    t.diagnostic(`lifecycle: ${JSON.stringify(snap0.lifecycle.map((l) => [l.id, l.ev]))}`);
    assert.equal(stack.nginx.streams().length, 1, `one stream established: ${JSON.stringify(stack.nginx.streams().map((s) => s.uri))}`);
    assert.equal(app.requests.length, 1, `one /events request: ${JSON.stringify(app.requests)}`);
    assert.equal(await openStreams(stack), 1, 'one connection held');
    assert.equal(snap0.status, 'open', 'client status open');
    assert.deepEqual(snap0.active, ['logs:w1:f1', 'metrics:cpu'], 'active subscriptions');

    // Events published with ids, as a service would.
    const pub = { accepted: [], unknown: [] };
    const n = { 'logs:w1:f1': 0, 'metrics:cpu': 0 };
    const publish = async (ch, count) => {
      for (let i = 0; i < count; i++) {
        n[ch]++;
        const id = await stack.redis.ssePublish(ch, JSON.stringify({ ch, n: n[ch] }));
        pub.accepted.push({ ch, n: n[ch], id: String(id), t: Date.now() });
      }
    };
    const has = (id, ch) => async () => (await app.seen(id)).some((r) => r.data.n === n[ch]);
    await publish('logs:w1:f1', 5);
    await publish('metrics:cpu', 5);
    assert.ok(await waitUntil(async () => (await has('m1', 'logs:w1:f1')()) && (await has('m2', 'metrics:cpu')()) && (await has('m3', 'metrics:cpu')()), 5000), 'first events received');
    for (const [id, ch] of MOUNT.map((m) => [m.id, m.sub])) {
      const r = exactlyOnce(await app.seen(id), pub, ch);
      assert.ok(r.ok, `StrictMode, first events: ${describe(id, r)}`);
    }

    // Unmount m2 and mount it again (same id, same view key).
    const before = await app.seen('m2');
    await app.unmount('m2');
    await publish('metrics:cpu', 3); // m3 still wants metrics:cpu
    await sleep(300);
    await app.mount(MOUNT[1]);
    const after = await app.seen('m2');
    t.diagnostic(`m2: ${before.length} events before unmounting, ${after.length} right after remounting`);
    assert.deepEqual(after.slice(0, before.length), before, 'the remounted component starts from the state it had');
    const viewAfter = (await app.views()).m2;
    assert.ok(['live', 'connecting'].includes(viewAfter.status), `m2 status after remount: ${viewAfter.status}`);
    assert.ok(await app.waitViews(['m2'], 'live', 5000), 'm2 live again');
    await sleep(300);
    const markN = n['metrics:cpu'];
    await publish('metrics:cpu', 4);
    assert.ok(await waitUntil(has('m2', 'metrics:cpu'), 5000), 'm2 receives again after remounting');
    const m2 = await app.seen('m2');
    const r = exactlyOnce(m2, pub, 'metrics:cpu', { from: markN + 1 });
    const dup = exactlyOnce(m2, pub, 'metrics:cpu');
    t.diagnostic(`m2 after remount: ${describe('m2', dup)}`);
    assert.ok(r.ok, `m2 events after the remount exactly once: ${describe('m2', r)}`);
    assert.deepEqual(dup.duplicates, [], 'm2: no event twice');
    assert.equal(dup.outOfOrder, 0, 'm2: in order');
    const m3 = exactlyOnce(await app.seen('m3'), pub, 'metrics:cpu');
    assert.ok(m3.ok, `m3 (listener, mounted throughout): ${describe('m3', m3)}`);

    // m1 is alone on logs:w1:f1: unmounting it takes the channel off the
    // connection; mounting it again brings both the channel and its state back.
    const before1 = await app.seen('m1');
    const streams0 = stack.nginx.streams().length;
    await app.unmount('m1');
    const dropped = await waitUntil(async () => !(await app.snapshot(false)).active.includes('logs:w1:f1'), 3000);
    assert.ok(dropped, 'logs:w1:f1 left the active subscriptions once m1 unmounted');
    await sleep(200);
    await app.mount(MOUNT[0]);
    const after1 = await app.seen('m1');
    assert.deepEqual(after1.slice(0, before1.length), before1, 'm1 remounted starts from the state it had');
    assert.ok(await app.waitFor((s) => s.views.m1?.status === 'live' && s.active.includes('logs:w1:f1'), 5000), 'm1 live again');
    await sleep(200);
    const mark1 = n['logs:w1:f1'];
    await publish('logs:w1:f1', 4);
    assert.ok(await waitUntil(has('m1', 'logs:w1:f1'), 5000), 'm1 receives again');
    const r1 = exactlyOnce(await app.seen('m1'), pub, 'logs:w1:f1', { from: mark1 + 1 });
    const all1 = exactlyOnce(await app.seen('m1'), pub, 'logs:w1:f1');
    t.diagnostic(`m1 (channel dropped and requested again): ${describe('m1', all1)}; streams ${streams0} -> ${stack.nginx.streams().length}`);
    assert.ok(r1.ok, `m1 events after the remount exactly once: ${describe('m1', r1)}`);
    assert.deepEqual(all1.duplicates, [], 'm1: no event twice');
    assert.equal(await openStreams(stack), 1, 'one connection held at the end');
    t.diagnostic(`streams established in all: ${stack.nginx.streams().length}`);
  });
});
