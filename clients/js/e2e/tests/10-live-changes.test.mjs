// Live channel changes: the client with `subscribeUrl` against nginx with
// `sse_session on` on /events and an `sse_subscribe` location at
// /events/subscribe (README "Changing channels without reconnecting").
//
// 1. Route switches every 400 ms under 200 msg/s change the ONE stream in
//    place: the page makes one GET /events and POSTs the changes; nginx
//    opened one stream (access log, sse_streams_opened_total); components
//    mounted throughout receive every event exactly once; a component mounted
//    at A on channel c receives every event of c above the last_event_id L of
//    the change that added c (read from the page's own POST), exactly once, in
//    order; the channels of the route left stop on the wire and in Redis;
//    sse-session / sse-channels never reach a component.
// 2. A change held 400 ms before it leaves (the page's fetch delays it):
//    events published on the added channel between the switch and its effect
//    arrive, replayed below ids the stream already delivered, once each; the
//    removed channel's events stop on the wire once the change took effect.
// 3. Without `sse_session` (the server does not offer it) the client falls
//    back to reconnecting with Last-Event-ID: no POST, a second stream.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { scenario, skipReason, newContext, openStreams, sleep, waitUntil } from '../lib/stack.mjs';
import { startPublisher } from '../lib/redis.mjs';
import { exactlyOnce, describe, contiguous, runs } from '../lib/check.mjs';

const skip = skipReason() ?? false;
const LIVE = { subscribeUrl: '/events/subscribe' };

const listOf = (s) => (s ? s.split(',').map((x) => x.trim()).filter(Boolean) : []);
const sorted = (a) => [...a].sort();

// id: component, sub: its subscription, ch: the channel published for it.
const PERSISTENT = [
  { id: 'p1', sub: 'logs:w1:main', ch: 'logs:w1:main' },
  { id: 'p2', sub: 'metrics:ra2', ch: 'metrics:ra2' },
];
const ROUTES = {
  A: [['a1', 'logs:w1:ra1', 'logs:w1:ra1'], ['a2', 'metrics:ra2', 'metrics:ra2'], ['a3', 'alerts:ra3', 'alerts:ra3']],
  B: [['b1', 'logs:w1:rb1', 'logs:w1:rb1'], ['b2', 'metrics:rb2', 'metrics:rb2'], ['b3', 'dashboards:*', 'dashboards:rb3']],
};
const CHANNELS = [...new Set([...PERSISTENT.map((p) => p.ch), ...Object.values(ROUTES).flat().map(([, , c]) => c)])];
const routeSpecs = (name, k) => ROUTES[name].map(([id, sub, ch]) => ({ id: `${id}.${k}`, sub, ch }));
const specOnly = ({ id, sub }) => ({ id, sub });

test('route switches change one stream in place: one connection, nothing lost, nothing twice', { skip, timeout: 90000 }, async (t) => {
  await scenario(t, {}, async (stack) => {
    const ctx = await newContext(stack, 'bob');
    const first = [...PERSISTENT, ...routeSpecs('A', 0)];
    const app = await stack.open(ctx, { options: LIVE, wire: true, mount: first.map(specOnly) });
    assert.ok(await app.waitViews(first.map((s) => s.id), 'live', 8000), 'initial components live');
    assert.ok(await stack.redis.waitSubscribed([...new Set(first.map((s) => s.ch))], 5000), 'their channels are subscribed in Redis');
    const opened0 = (await stack.nginx.metrics()).sse_streams_opened_total;
    assert.equal(opened0, 1, 'sse_streams_opened_total before the switches');

    const periods = new Map();
    const t0 = Date.now();
    for (const s of routeSpecs('A', 0)) periods.set(s.id, { ...s, from: t0, to: null });
    const pub = startPublisher({ port: stack.redis.port, channels: CHANNELS, rate: 200 });
    await sleep(400);
    let k = 0;
    let route = 'A';
    const switchStart = Date.now();
    let lastSwitch = switchStart;
    while (Date.now() - switchStart < 5000) {
      k++;
      const next = route === 'A' ? 'B' : 'A';
      const specs = routeSpecs(next, k);
      const { t: committed } = await app.set([...PERSISTENT, ...specs].map(specOnly));
      lastSwitch = committed;
      for (const [, p] of periods) if (p.to === null) p.to = committed;
      for (const s of specs) periods.set(s.id, { ...s, from: committed, to: null });
      route = next;
      const wait = switchStart + (k + 1) * 400 - Date.now();
      if (wait > 0) await sleep(wait);
    }
    // The last route stays a while: the channels of the other one must stop.
    await sleep(1500);
    const res = await pub.stop();
    t.diagnostic(`${k} switches; ${res.accepted.length} events accepted, ${res.unknown.length} unknown, ${res.failures} failed attempts`);

    const lastRoute = routeSpecs(route, k);
    const stillMounted = [...PERSISTENT, ...lastRoute];
    await waitUntil(async () => {
      const s = await app.snapshot(true);
      return stillMounted.every((c) => (s.seen[c.id] || []).some((r) => r.data && r.data.n === res.perChannel[c.ch]));
    }, 8000, 100);
    const snap = await app.snapshot(true);
    for (const [, p] of periods) if (p.to === null) p.to = Infinity;

    // One connection, changed in place.
    const changes = stack.nginx.changes();
    t.diagnostic(`page: ${app.requests.length} GET /events, ${app.changes.length} changes POSTed; nginx: ${stack.nginx.streams().length} streams, `
      + `${changes.length} changes (${JSON.stringify(Object.entries(changes.reduce((m, l) => ({ ...m, [l.status]: (m[l.status] || 0) + 1 }), {})))})`);
    assert.equal(app.requests.length, 1, `one GET /events from the page: ${JSON.stringify(app.requests)}`);
    assert.equal(stack.nginx.streams().length, 1, 'one stream established (access log)');
    const metrics = await stack.nginx.metrics();
    assert.equal(metrics.sse_streams_opened_total, 1, 'sse_streams_opened_total stays 1');
    assert.equal(await openStreams(stack), 1, 'one connection held');
    assert.ok(app.changes.length >= k / 2, `the switches were POSTed (${app.changes.length} for ${k} switches)`);
    assert.ok(app.changes.every((c) => c.method === 'POST' && c.form.session), 'changes are POSTs carrying the session');
    assert.equal(changes.length, app.changes.length, 'nginx logged each change');
    assert.deepEqual(changes.filter((l) => l.status !== 200), [], 'every change answered 200');
    const changeMetrics = Object.entries(metrics).filter(([name]) => name.startsWith('sse_channel_changes_total'));
    t.diagnostic(`metrics: ${JSON.stringify(changeMetrics)}`);

    // sse-session and sse-channels came on the wire, and reached no component.
    const wire = snap.wire;
    assert.equal(wire.filter((w) => w.event === 'sse-session').length, 1, 'one sse-session event');
    assert.equal(wire[0].event, 'sse-session', 'the stream\'s first event is its session token');
    const chEvents = wire.filter((w) => w.event === 'sse-channels');
    assert.equal(chEvents.length, changes.length, 'each change shows on the stream as sse-channels');
    assert.deepEqual(sorted(listOf(chEvents.at(-1).data)), sorted(new Set(stillMounted.map((s) => s.sub))),
      'the last sse-channels names the channels of the last route');
    for (const [id, recs] of Object.entries(snap.seen)) {
      assert.ok(!recs.some((r) => r.channel.startsWith('sse-')), `${id} received no sse- event`);
    }

    const problems = [];
    for (const c of PERSISTENT) {
      const r = exactlyOnce(snap.seen[c.id] || [], res, c.ch);
      t.diagnostic(describe(c.id, r));
      if (!r.ok) problems.push(describe(c.id, r));
    }

    // Where missing events were on the wire (ids around them), for the diagnostics.
    const onWire = (accs) => accs.slice(0, 3).map((a) => {
      const i = snap.wire.findIndex((w) => w.id === a.id);
      if (i < 0) return `id ${a.id} not received`;
      return `id ${a.id} after ${snap.wire.slice(Math.max(0, i - 4), i).map((w) => `${w.event}#${w.id ?? ''}`).join(' ')}`;
    }).join('; ');

    // Components of the routes: from the last_event_id of the change that added their subscription.
    let checked = 0;
    let due = 0;
    const lags = [];
    let replayedBelow = 0;
    for (const [id, p] of periods) {
      const recs = snap.seen[id] || [];
      const c = contiguous(recs, res, p.ch);
      // A channel kept on the stream (p2's) needs no change: its events reach
      // the component from its mount on (100 ms of margin: the publisher's
      // clock reads Redis' answers late when this process is busy). Another
      // one: from the last_event_id of the change that added it.
      const kept = PERSISTENT.some((q) => q.sub === p.sub);
      const change = kept ? null : app.changes.find((ch) => ch.t >= p.from - 20 && listOf(ch.form.add).includes(p.sub));
      const L = change ? Number(change.form.last_event_id || 0) : null;
      // When the change took effect: its sse-channels on the wire. Events of
      // the channel above L published before then come with the replay, right
      // after it; so an event is due if it was accepted, and the change had
      // taken effect, 150 ms before the unmount. Patterns have no history
      // (README, sse_history): one added in place starts at the change's effect.
      const pattern = p.sub.includes('*');
      // (change.t is when the test process heard of the request: up to some ms late.)
      const effect = change && snap.wire.find((w) => w.event === 'sse-channels' && w.t >= change.t - 300 && listOf(w.data).includes(p.sub));
      if (effect) lags.push(effect.t - change.t);
      const mine = res.accepted.filter((a) => a.ch === p.ch && (kept
        ? a.t >= p.from + 100 && a.t <= p.to - 150
        : effect && (pattern
          ? a.t >= effect.t + 100 && a.t <= p.to - 150
          : Number(a.id) > L && Math.max(a.t, effect.t) <= p.to - 150)));
      const got = new Map();
      for (const r of recs) if (r.channel === p.ch) got.set(r.data.n, (got.get(r.data.n) || 0) + 1);
      const missing = mine.filter((a) => !got.has(a.n)).map((a) => a.n);
      const foreign = recs.filter((r) => r.channel !== p.ch).length;
      due += mine.length;
      checked++;
      const line = `${id} ${p.sub} mounted ${p.from - t0}..${p.to === Infinity ? 'end' : p.to - t0} ms: received ${c.received} (n ${c.first}..${c.last}), `
        + `change last_event_id=${change ? change.form.last_event_id : kept ? '(kept)' : 'none'}`
        + (effect ? ` (POSTed at ${change.t - t0}, effect at ${effect.t - t0} ms)` : '') + `, due ${mine.length}`
        + (missing.length ? `, MISSING n ${runs(missing)} (on the wire: ${onWire(missing.map((n) => mine.find((a) => a.n === n)))})` : '')
        + (c.gaps.length ? `, GAPS n ${runs(c.gaps)}` : '')
        + (c.duplicates.length ? `, DUPLICATES n ${runs(c.duplicates)}` : '')
        + (c.outOfOrder ? `, ${c.outOfOrder} OUT OF ORDER` : '')
        + (foreign ? `, ${foreign} events of other channels` : '');
      if (!kept && (!change || !effect)) problems.push(`${line}: no change ${change ? 'took effect that added' : 'added'} ${p.sub}`);
      if (missing.length || !c.ok || foreign) problems.push(line);
    }
    // Events that came below an id the stream had already delivered (the replay of an added channel).
    let top = 0;
    for (const w of wire) {
      if (w.id === undefined) continue;
      if (Number(w.id) < top) replayedBelow++;
      top = Math.max(top, Number(w.id));
    }
    t.diagnostic(`change POSTed → sse-channels, in order: ${lags.join(' ')} ms; stream on nginx pid ${stack.nginx.streams()[0].pid}, changes on ${changes.map((l) => l.pid).join(' ')}`);
    lags.sort((a, b) => a - b);
    t.diagnostic(`${checked} route mounts checked, ${due} events due to them; ${replayedBelow} events replayed below the stream's last id; `
      + `change POSTed → sse-channels on the wire: median ${lags[lags.length >> 1]} ms, max ${lags.at(-1)} ms`);
    assert.deepEqual(problems, [], 'every component received its events exactly once');
    assert.ok(checked >= 10, 'enough switches happened');

    // The channels of the route left: not on the wire any more, not subscribed in Redis.
    const left = ROUTES[route === 'A' ? 'B' : 'A'].map(([, , ch]) => ch).filter((ch) => !stillMounted.some((s) => s.ch === ch));
    const late = wire.filter((w) => left.includes(w.event) && w.t > lastSwitch + 500);
    assert.deepEqual(late.map((w) => `${w.event}#${w.id}`), [], `no event of ${left.join(', ')} on the stream 500 ms after the last switch`);
    const numsub = await stack.redis.numsub(...left.filter((ch) => !ch.startsWith('dashboards')));
    assert.ok(Object.values(numsub).every((n) => n === 0), `unsubscribed in Redis: ${JSON.stringify(numsub)}`);
  });
});

test('a change held 400 ms: what the added channel published meanwhile arrives once; the removed one stops', { skip, timeout: 60000 }, async (t) => {
  await scenario(t, {}, async (stack) => {
    const ctx = await newContext(stack, 'bob');
    const app = await stack.open(ctx, {
      options: LIVE, wire: true, changeDelayMs: 400,
      mount: [{ id: 'p1', sub: 'logs:w1:main' }, { id: 'old', sub: 'metrics:old' }],
    });
    assert.ok(await app.waitViews(['p1', 'old'], 'live', 8000), 'components live');
    const pub = [];
    const publish = async (ch, n) => pub.push({ ch, n, id: String(await stack.redis.ssePublish(ch, JSON.stringify({ ch, n }))), t: Date.now() });
    await publish('metrics:new', 1); // before the switch and below the page's last id: not due
    await publish('logs:w1:main', 1);
    await publish('metrics:old', 1);
    assert.ok(await waitUntil(async () => (await app.seen('old')).length === 1 && (await app.seen('p1')).length === 1, 3000), 'old and p1 got their events');

    // The switch: metrics:old out, metrics:new in. The client makes the
    // change (last_event_id: its last id) after its 50 ms debounce; the page
    // holds it 400 ms before it leaves: everything published meanwhile is
    // after that id, and the stream goes on with logs:w1:main.
    const { t: switched } = await app.set([{ id: 'p1', sub: 'logs:w1:main' }, { id: 'new', sub: 'metrics:new' }]);
    await sleep(120);
    assert.equal(app.changes.length, 0, 'the change is held');
    for (let n = 2; n <= 6; n++) {
      await publish('metrics:new', n);
      await publish('logs:w1:main', n);
      await publish('metrics:old', n);
      await sleep(25);
    }
    assert.ok(await waitUntil(() => app.changes.length >= 1, 3000), 'the change was POSTed');
    const change = app.changes[0];
    t.diagnostic(`change sent ${change.t - switched} ms after the switch: add=${change.form.add} remove=${change.form.remove} last_event_id=${change.form.last_event_id}`);
    assert.equal(change.form.add, 'metrics:new');
    assert.equal(change.form.remove, 'metrics:old');
    const L = Number(change.form.last_event_id);
    assert.ok(await app.waitViews(['new'], 'live', 5000), 'the added subscription goes live');
    for (let n = 7; n <= 9; n++) {
      await publish('metrics:new', n);
      await publish('metrics:old', n);
      await publish('logs:w1:main', n);
    }
    const ok = await waitUntil(async () => (await app.seen('new')).some((r) => r.data.n === 9)
      && (await app.seen('p1')).some((r) => r.data.n === 9), 5000);
    await sleep(300);
    const snap = await app.snapshot(true);
    const accepted = { accepted: pub, unknown: [] };

    const p1 = exactlyOnce(snap.seen.p1, accepted, 'logs:w1:main');
    t.diagnostic(describe('p1', p1));
    assert.ok(p1.ok, describe('p1', p1));
    const dueNew = pub.filter((a) => a.ch === 'metrics:new' && Number(a.id) > L).map((a) => a.n);
    assert.deepEqual(dueNew, [2, 3, 4, 5, 6, 7, 8, 9], 'the events published after the switch are due to the new component');
    const gotNew = snap.seen.new.map((r) => [r.channel, r.data.n, r.id]);
    assert.ok(ok, `new received up to n=9: ${JSON.stringify(gotNew)}`);
    assert.deepEqual(gotNew, pub.filter((a) => a.ch === 'metrics:new' && Number(a.id) > L).map((a) => ['metrics:new', a.n, a.id]),
      'metrics:new: every event after the change\'s last_event_id, once, in order, with its id');

    // On the wire: the events published while the change was held came
    // after later ids of logs:w1:main (the replay below the last id), and
    // metrics:old stopped once the change took effect (its sse-channels).
    const wire = snap.wire;
    const effect = wire.findIndex((w) => w.event === 'sse-channels');
    assert.ok(effect > 0, 'the change shows on the stream as sse-channels');
    assert.deepEqual(sorted(listOf(wire[effect].data)), ['logs:w1:main', 'metrics:new']);
    const before = Math.max(...wire.slice(0, effect).filter((w) => w.id).map((w) => Number(w.id)));
    const replayed = wire.slice(effect).filter((w) => w.event === 'metrics:new' && Number(w.id) < before);
    t.diagnostic(`stream at id ${before} when the change took effect; ${replayed.length} metrics:new events replayed below it`);
    assert.ok(replayed.length >= 1, 'some of metrics:new came below ids already delivered (and were not dropped)');
    const oldAfter = wire.slice(effect).filter((w) => w.event === 'metrics:old');
    assert.deepEqual(oldAfter.map((w) => w.id), [], 'no metrics:old on the stream after the change took effect');
    assert.ok(!snap.seen.old.some((r) => r.data.n > 1), 'the unmounted component got nothing more');

    assert.equal(app.requests.length, 1, 'one GET /events');
    assert.equal((await stack.nginx.metrics()).sse_streams_opened_total, 1, 'sse_streams_opened_total 1');
    assert.deepEqual(stack.nginx.changes().map((l) => l.status), [200], 'one change, answered 200');
  });
});

test('without sse_session the client falls back to reconnecting with Last-Event-ID', { skip, timeout: 60000 }, async (t) => {
  await scenario(t, { session: false }, async (stack) => {
    const ctx = await newContext(stack, 'bob');
    const app = await stack.open(ctx, { options: LIVE, wire: true, mount: [{ id: 'a', sub: 'logs:w1:a' }] });
    assert.ok(await app.waitViews(['a'], 'live', 8000), 'a live');
    const id1 = String(await stack.redis.ssePublish('logs:w1:a', JSON.stringify({ ch: 'logs:w1:a', n: 1 })));
    assert.ok(await waitUntil(async () => (await app.seen('a')).length === 1, 3000), 'a got its event');
    await app.set([{ id: 'b', sub: 'logs:w1:b' }]);
    assert.ok(await app.waitViews(['b'], 'live', 8000), 'b live');
    const id2 = String(await stack.redis.ssePublish('logs:w1:b', JSON.stringify({ ch: 'logs:w1:b', n: 1 })));
    assert.ok(await waitUntil(async () => (await app.seen('b')).length === 1, 3000), 'b got its event');
    await sleep(300);
    const snap = await app.snapshot(true);
    t.diagnostic(`requests ${JSON.stringify(app.requests)}`);
    assert.equal(snap.wire.filter((w) => w.event === 'sse-session').length, 0, 'no sse-session without sse_session on');
    assert.equal(app.changes.length, 0, 'no change POSTed');
    assert.equal(stack.nginx.changes().length, 0, 'nginx saw no change');
    assert.equal(app.requests.length, 2, 'two GET /events');
    assert.deepEqual([app.requests[1].channels, app.requests[1].lei], ['logs:w1:b', id1], 'the second one for b, resuming from the last id');
    assert.equal(stack.nginx.streams().length, 2, 'two streams established');
    assert.equal(await openStreams(stack), 1, 'one connection held (the first one closed)');
    assert.deepEqual(snap.seen.b.map((r) => r.id), [id2]);
  });
});
