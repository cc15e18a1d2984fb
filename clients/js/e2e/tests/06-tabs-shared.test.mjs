// Three tabs (three pages of one browser context) with shareAcrossTabs: true
// hold ONE stream connection between them (one tab, the leader, fetches; the
// others get the events relayed). The third tab also wants alerts:bob, which
// the others do not: the one connection carries the union. Closing the leader
// tab hands the connection over to another tab, under steady publishing
// (history on), without loss or duplicates in the tabs that remain.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { scenario, skipReason, newContext, openStreams, sleep, waitUntil } from '../lib/stack.mjs';
import { startPublisher } from '../lib/redis.mjs';
import { exactlyOnce, describe } from '../lib/check.mjs';

const skip = skipReason() ?? false;

const MOUNT = [
  { id: 't1', sub: 'logs:w1:f1' },
  { id: 't2', sub: 'metrics:cpu' },
];
const EXTRA = { id: 't3', sub: 'alerts:bob' };
const CFG = { options: { shareAcrossTabs: true }, mount: MOUNT };
const ALL = [...MOUNT.map((m) => m.sub), EXTRA.sub].sort();
const mountOf = (i) => (i === 2 ? [...MOUNT, EXTRA] : MOUNT);

test('three tabs share one connection; closing the leader hands over without loss', { skip, timeout: 60000 }, async (t) => {
  await scenario(t, {}, async (stack) => {
    const ctx = await newContext(stack, 'bob');
    const tabs = [];
    for (let i = 0; i < 3; i++) {
      const app = await stack.open(ctx, { ...CFG, mount: mountOf(i) });
      assert.ok(await app.waitViews(mountOf(i).map((m) => m.id), 'live', 8000), `tab ${i} live`);
      tabs.push(app);
    }
    await sleep(1000);
    const lastStream = stack.nginx.streams().at(-1);
    const fetching = tabs.map((a, i) => [i, a.requests.length]).filter(([, n]) => n > 0);
    t.diagnostic(`after 3 tabs: ${stack.nginx.streams().length} streams established, ${await openStreams(stack)} held; /events requests per tab ${JSON.stringify(tabs.map((a) => a.requests.length))}`);
    assert.equal(await openStreams(stack), 1, 'one stream connection held for the three tabs');
    assert.equal(fetching.length, 1, `one tab (the leader) made /events requests: ${JSON.stringify(fetching)}`);
    assert.deepEqual(lastStream.channels.split(',').sort(), ALL, 'the stream carries the union of the tabs\' subscriptions');
    for (const [i, a] of tabs.entries()) {
      const s = await a.snapshot(false);
      assert.equal(s.status, 'open', `tab ${i}: client status open`);
    }
    assert.ok(await stack.redis.waitSubscribed(ALL, 5000), 'channels subscribed in Redis');

    const pub = startPublisher({ port: stack.redis.port, channels: ALL, rate: 120 });
    await sleep(1000);
    const leaderIdx = fetching[0][0];
    const leader = tabs[leaderIdx];
    const rest = tabs.filter((a) => a !== leader);
    const tc = Date.now();
    await leader.page.close();
    const took = await waitUntil(() => rest.some((a) => a.requests.some((r) => r.t >= tc)), 8000, 20);
    const newLeader = rest.find((a) => a.requests.some((r) => r.t >= tc));
    t.diagnostic(`closed leader tab ${leaderIdx}; ${took ? `tab ${tabs.indexOf(newLeader)} took over ${newLeader.requests.find((r) => r.t >= tc).t - tc} ms later (Last-Event-ID ${newLeader.requests.find((r) => r.t >= tc).lei})` : 'NO tab took over within 8 s'}`);
    assert.ok(took, 'another tab opened the stream');
    await sleep(1500);
    const res = await pub.stop();
    assert.equal(await openStreams(stack), 1, 'one stream connection held after the handover');

    const last = res.perChannel;
    for (const a of rest) {
      const i = tabs.indexOf(a);
      await waitUntil(async () => {
        const s = await a.snapshot(true);
        return mountOf(i).every((c) => (s.seen[c.id] || []).some((r) => r.data && r.data.n >= last[c.sub]));
      }, 8000, 100);
    }
    const problems = [];
    for (const a of rest) {
      const s = await a.snapshot(true);
      for (const c of mountOf(tabs.indexOf(a))) {
        const r = exactlyOnce(s.seen[c.id] || [], res, c.sub);
        const line = `tab ${tabs.indexOf(a)} ${describe(c.id, r)}`;
        t.diagnostic(line);
        if (!r.ok) problems.push(line);
      }
    }
    assert.deepEqual(problems, [], 'the remaining tabs received every event exactly once');
  });
});
