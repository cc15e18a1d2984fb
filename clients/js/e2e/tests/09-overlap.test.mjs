// Overlapping subscriptions (API.md, server facts): the server refuses with
// 400 a request holding two subscriptions that could match the same channel
// (`dashboards:*` with `dashboards:7`), so the client never sends them
// together: it keeps the overlapping one out of the request; one that the
// other covers (`dashboards:7` under `dashboards:*`) is served by it and is
// live (a partial overlap would be `denied` with reason `overlap`, see the
// unit tests). When the pattern component unmounts, the channel is requested
// on its own and stays live.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { scenario, skipReason, newContext, sleep, waitUntil } from '../lib/stack.mjs';

const skip = skipReason() ?? false;

test('overlapping subscriptions are never sent together', { skip, timeout: 60000 }, async (t) => {
  await scenario(t, {}, async (stack) => {
    const ctx = await newContext(stack, 'bob');
    const app = await stack.open(ctx, { mount: [{ id: 'pat', sub: 'dashboards:*' }, { id: 'one', sub: 'dashboards:7' }] });
    const settled = await app.waitFor((s) => s.views.pat?.status === 'live' && s.views.one?.status === 'live', 8000);
    const snap = await app.snapshot(false);
    t.diagnostic(`views ${JSON.stringify(snap.views)}; active ${JSON.stringify(snap.active)}; requests ${JSON.stringify(app.requests.map((r) => r.channels))}`);
    assert.ok(settled, 'the pattern is live, and dashboards:7 with it');
    assert.equal(snap.views.one.error, undefined, 'no error on the covered subscription');
    assert.deepEqual(snap.active, ['dashboards:*'], 'only the pattern is requested');
    const bad = stack.nginx.accessLog().filter((l) => l.path === '/events' && l.status === 400);
    assert.deepEqual(bad.map((l) => l.channels), [], 'the server never had to answer 400');

    await stack.redis.ssePublish('dashboards:7', JSON.stringify({ ch: 'dashboards:7', n: 1 }));
    assert.ok(await waitUntil(async () => (await app.seen('pat')).length >= 1, 5000), 'the pattern component gets dashboards:7');
    assert.ok(await waitUntil(async () => (await app.seen('one')).length >= 1, 5000), 'so does the dashboards:7 component, through the pattern');
    await sleep(200);
    const viaPattern = (await app.seen('one')).map((r) => r.data.n);
    assert.deepEqual(viaPattern, [1], 'once');
    const mark = viaPattern.length;

    await app.unmount('pat');
    const alone = await app.waitFor((s) => s.views.one?.status === 'live' && s.active.join() === 'dashboards:7', 5000);
    assert.ok(alone, `dashboards:7 goes live once the pattern is gone: ${JSON.stringify((await app.snapshot(false)).views.one)}`);
    await stack.redis.ssePublish('dashboards:7', JSON.stringify({ ch: 'dashboards:7', n: 2 }));
    assert.ok(await waitUntil(async () => (await app.seen('one')).length >= mark + 1, 5000), 'dashboards:7 streams to its component');
    await sleep(200);
    const got = (await app.seen('one')).slice(mark).map((r) => r.data.n);
    assert.deepEqual(got, [2], 'it receives the event published after it went live, once');
  });
});
