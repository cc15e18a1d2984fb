// Revocation: the auth service changes alice's grants (dashboards:1 taken
// away, dashboards:3 given), then `PUBLISH sse:control "revoke alice"`: nginx
// ends her stream, the page reconnects, auth runs again and the new grants
// apply: dashboards:3 (denied so far) starts streaming, dashboards:1 becomes
// denied, and logs:w1:f1 (granted throughout) loses and duplicates nothing.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { scenario, skipReason, newContext, sleep, waitUntil } from '../lib/stack.mjs';
import { startPublisher } from '../lib/redis.mjs';
import { exactlyOnce, describe, contiguous, runs } from '../lib/check.mjs';

const skip = skipReason() ?? false;

const MOUNT = [
  { id: 'r1', sub: 'logs:w1:f1' },
  { id: 'r2', sub: 'dashboards:1' },
  { id: 'r3', sub: 'dashboards:3' },
];

test('revocation: the page reconnects and the new grants apply', { skip, timeout: 60000 }, async (t) => {
  await scenario(t, {}, async (stack) => {
    const ctx = await newContext(stack, 'alice');
    const app = await stack.open(ctx, { mount: MOUNT });
    assert.ok(await app.waitViews(['r1', 'r2'], 'live', 8000), 'r1, r2 live');
    assert.ok(await app.waitViews(['r3'], 'denied', 8000), 'r3 (dashboards:3) denied at first');
    assert.ok(await stack.redis.waitSubscribed(['logs:w1:f1', 'dashboards:1'], 5000), 'channels subscribed in Redis');

    const pub = startPublisher({ port: stack.redis.port, channels: MOUNT.map((m) => m.sub), rate: 90 });
    await sleep(1000);
    const authBefore = stack.auth.checksFor('alice').length;
    const streamsBefore = stack.nginx.streams().length;

    stack.auth.setGrants('alice', 'logs:*:*, metrics:*, alerts:alice, dashboards:3');
    const tr = Date.now();
    const receivers = await stack.redis.publish('sse:control', 'revoke alice');
    t.diagnostic(`revoke alice published to ${receivers} workers`);

    const applied = await app.waitFor((s) => s.views.r3?.status === 'live' && s.views.r2?.status === 'denied', 10000);
    t.diagnostic(`new grants ${applied ? `applied ${Date.now() - tr} ms after the revocation` : 'NOT applied within 10 s'}`);
    const tApplied = Date.now();
    await sleep(1000);
    const res = await pub.stop();

    const snap = await app.snapshot(true);
    t.diagnostic(`views: ${JSON.stringify(snap.views)}; active ${JSON.stringify(snap.active)}`);
    t.diagnostic(`auth checks for alice: ${authBefore} before, ${stack.auth.checksFor('alice').length} after; `
      + `streams ${streamsBefore} -> ${stack.nginx.streams().length}; requests after revoke ${JSON.stringify(app.requests.filter((r) => r.t >= tr).map((r) => [r.t - tr, r.channels, r.lei]))}`);
    assert.ok(stack.nginx.streams().length > streamsBefore, 'a new stream was established after the revocation');
    assert.ok(stack.auth.checksFor('alice').length > authBefore, 'auth ran again');
    assert.equal(snap.views.r3?.status, 'live', 'dashboards:3 (newly granted) is live');
    assert.equal(snap.views.r2?.status, 'denied', 'dashboards:1 (taken away) is denied');
    assert.equal((await app.subStatus('dashboards:1'))?.status, 'denied', "client.subscriptionStatus('dashboards:1')");
    assert.match((await app.domOf('r2')).text, /dashboards:1/, 'the denied component names its channel');

    // r3 streams from the moment the grant applied on.
    const r3 = contiguous(snap.seen.r3 || [], res, 'dashboards:3');
    const due3 = res.accepted.filter((a) => a.ch === 'dashboards:3' && a.t >= tApplied + 200);
    const got3 = new Set((snap.seen.r3 || []).map((r) => r.data.n));
    const missing3 = due3.filter((a) => !got3.has(a.n)).map((a) => a.n);
    t.diagnostic(`r3: received ${r3.received} (n ${r3.first}..${r3.last}), ${due3.length} due after the grant applied`);
    assert.ok(r3.received > 0, 'dashboards:3 streams');
    assert.ok(r3.ok, `dashboards:3 in order, no duplicate, no gap: ${JSON.stringify(r3)}`);
    assert.deepEqual(missing3, [], `dashboards:3 events published after the grant applied all received (missing ${runs(missing3)})`);

    // r2 received nothing published after the revocation took effect.
    const late2 = (snap.seen.r2 || []).filter((r) => {
      const a = res.accepted.find((x) => x.ch === 'dashboards:1' && x.n === r.data.n);
      return a && a.t > tr + 200;
    });
    assert.equal(late2.length, 0, `dashboards:1 delivered nothing after the revocation: ${JSON.stringify(late2.slice(0, 3))}`);

    // r1 (granted throughout) exactly once.
    await waitUntil(async () => (await app.seen('r1')).some((r) => r.data.n >= res.perChannel['logs:w1:f1']), 8000, 100);
    const r1 = exactlyOnce(await app.seen('r1'), res, 'logs:w1:f1');
    t.diagnostic(describe('r1', r1));
    assert.ok(r1.ok, describe('r1', r1));
  });
});
