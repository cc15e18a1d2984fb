// Route switches under load: every ~300 ms for ~5 s the page swaps three
// components for four others (and back), while 200 msg/s are published with
// FCALL sse_publish on every channel involved (history on).
//
// What must hold, per component, with "received" = what its useSSE reducer got:
// - the components that stay mounted throughout (p1..p3; p3 shares its channel
//   with a route component, so demand is reference-counted) receive every
//   event of their channel exactly once, in order, from the first published;
// - a component mounted at A and unmounted at B on channel c: the connection
//   that first carries c after A was requested with Last-Event-ID L (read from
//   the page's own request), so the server replays every event of c with an
//   id above L: the component must receive each event of c with id > L that
//   was accepted by Redis more than 150 ms before B, exactly once, in order,
//   with no gap; nothing twice.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { scenario, skipReason, newContext, openStreams, sleep, waitUntil } from '../lib/stack.mjs';
import { startPublisher } from '../lib/redis.mjs';
import { exactlyOnce, describe, contiguous, runs } from '../lib/check.mjs';

const skip = skipReason() ?? false;

const PERSISTENT = [
  { id: 'p1', sub: 'logs:w1:main' },
  { id: 'p2', sub: 'metrics:main' },
  { id: 'p3', sub: 'metrics:ra2' },
];
const ROUTES = {
  A: [['a1', 'logs:w1:ra1'], ['a2', 'metrics:ra2'], ['a3', 'alerts:ra3']],
  B: [['b1', 'logs:w1:rb1'], ['b2', 'metrics:rb2'], ['b3', 'alerts:rb3'], ['b4', 'dashboards:rb4']],
};
const CHANNELS = [...new Set([...PERSISTENT.map((p) => p.sub), ...Object.values(ROUTES).flat().map(([, c]) => c)])];
const routeSpecs = (name, k) => ROUTES[name].map(([id, sub]) => ({ id: `${id}.${k}`, sub }));

const SWITCH_MS = Number(process.env.E2E_SWITCH_MS || 300);
const DURATION_MS = Number(process.env.E2E_SWITCH_FOR_MS || 5000);
const RATE = 200;

test('route switches every 300 ms under 200 msg/s: nothing lost, nothing twice', { skip, timeout: 90000 }, async (t) => {
  await scenario(t, {}, async (stack) => {
    const ctx = await newContext(stack, 'bob');
    const app = await stack.open(ctx, { mount: [...PERSISTENT, ...routeSpecs('A', 0)] });
    const firstIds = [...PERSISTENT.map((p) => p.id), ...routeSpecs('A', 0).map((s) => s.id)];
    assert.ok(await app.waitViews(firstIds, 'live', 8000), 'initial components live');
    assert.ok(await stack.redis.waitSubscribed([...PERSISTENT.map((p) => p.sub), ...ROUTES.A.map(([, c]) => c)], 5000),
      'their channels are subscribed in Redis');

    // Mount periods: instance id -> { sub, from, to }.
    const periods = new Map();
    const t0 = Date.now();
    for (const s of routeSpecs('A', 0)) periods.set(s.id, { sub: s.sub, from: t0, to: null });

    const pub = startPublisher({ port: stack.redis.port, channels: CHANNELS, rate: RATE });
    await sleep(SWITCH_MS);
    let k = 0;
    let route = 'A';
    const switchStart = Date.now();
    const lags = [];
    while (Date.now() - switchStart < DURATION_MS) {
      k++;
      const next = route === 'A' ? 'B' : 'A';
      const specs = routeSpecs(next, k);
      const before = Date.now();
      const { t: committed } = await app.set([...PERSISTENT, ...specs]);
      lags.push(Date.now() - before);
      for (const [id, p] of periods) if (p.to === null) { p.to = committed; periods.set(id, p); }
      for (const s of specs) periods.set(s.id, { sub: s.sub, from: committed, to: null });
      route = next;
      const wait = switchStart + (k + 1) * SWITCH_MS - Date.now();
      if (wait > 0) await sleep(wait);
    }
    const lastRoute = routeSpecs(route, k);
    await sleep(500);
    const res = await pub.stop();
    const stopT = Date.now();
    t.diagnostic(`${k} switches in ${stopT - switchStart} ms; ${res.accepted.length} events accepted (${(res.accepted.length / ((stopT - t0) / 1000)).toFixed(0)}/s), `
      + `${res.unknown.length} unknown, ${res.failures} failed attempts; app.set round trip max ${Math.max(...lags)} ms`);

    // Wait for the components still mounted to have their channel's last event.
    const last = res.perChannel;
    const stillMounted = [...PERSISTENT, ...lastRoute];
    await waitUntil(async () => {
      const s = await app.snapshot(true);
      return stillMounted.every((c) => (s.seen[c.id] || []).some((r) => r.data && r.data.n === last[c.sub]));
    }, 8000, 100);
    const snap = await app.snapshot(true);
    for (const [, p] of periods) if (p.to === null) p.to = Infinity;

    const streams = stack.nginx.streams();
    const held = await openStreams(stack);
    t.diagnostic(`${streams.length} stream connections established (access log), ${app.requests.length} /events requests from the page, ${held} held now`);
    assert.equal(held, 1, 'the replaced connections were closed: one held at the end');

    const problems = [];
    for (const c of PERSISTENT) {
      const r = exactlyOnce(snap.seen[c.id] || [], res, c.sub);
      t.diagnostic(describe(c.id, r));
      if (!r.ok) problems.push(describe(c.id, r));
    }

    // Transient components.
    let checked = 0;
    let eventsChecked = 0;
    for (const [id, p] of periods) {
      const recs = snap.seen[id] || [];
      const c = contiguous(recs, res, p.sub);
      // The first request after the mount that carries the channel, and its Last-Event-ID.
      const req = app.requests.find((r) => r.t >= p.from - 20 && r.channels && r.channels.split(',').includes(p.sub));
      const L = req ? Number(req.lei || 0) : null;
      const due = L === null ? [] : res.accepted.filter((a) => a.ch === p.sub && Number(a.id) > L && a.t <= p.to - 150);
      const got = new Map();
      for (const r of recs) if (r.channel === p.sub) got.set(r.data.n, (got.get(r.data.n) || 0) + 1);
      const missing = due.filter((a) => !got.has(a.n)).map((a) => a.n);
      const foreign = recs.filter((r) => r.channel !== p.sub).length;
      eventsChecked += due.length;
      checked++;
      const line = `${id} ${p.sub} mounted ${p.from - t0}..${p.to === Infinity ? 'end' : p.to - t0} ms: received ${c.received} (n ${c.first}..${c.last}), `
        + `request lei=${req ? req.lei : 'none'}, due ${due.length}`
        + (missing.length ? `, MISSING n ${runs(missing)}` : '')
        + (c.gaps.length ? `, GAPS n ${runs(c.gaps)}` : '')
        + (c.duplicates.length ? `, DUPLICATES n ${runs(c.duplicates)}` : '')
        + (c.outOfOrder ? `, ${c.outOfOrder} OUT OF ORDER` : '')
        + (foreign ? `, ${foreign} events of other channels` : '');
      if (!req && p.to - p.from > 500) problems.push(`${line}: no request ever carried ${p.sub}`);
      if (missing.length || !c.ok || foreign) problems.push(line);
    }
    t.diagnostic(`${checked} transient mounts checked, ${eventsChecked} events due to them`);
    assert.deepEqual(problems, [], 'every component received its events exactly once');
    assert.ok(checked >= 10, 'enough switches happened');
  });
});
