// Live channel changes (subscribeUrl + the stream's sse-session) against the
// scripted server: the POSTed change, its answers, serialization, the
// fallbacks to reconnecting, and the replay of added channels below the
// last id (exactly once).
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { createClient, type Client, type ClientOptions, type SSEEvent } from '../src/index';
import { createReplayFilter } from '../src/replay';
import { fakeServer, settle, type FakeBody, type FakeRequest } from './fake-server';

let client: Client | undefined;

beforeEach(() => {
  vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'Date'] });
});
afterEach(() => {
  client?.close();
  client = undefined;
  vi.useRealTimers();
  vi.restoreAllMocks();
});

async function tick(ms = 0) {
  await vi.advanceTimersByTimeAsync(ms);
  await settle();
}

function setup(options: Partial<ClientOptions> = {}) {
  const server = fakeServer();
  const c = createClient({ url: '/events', subscribeUrl: '/events/subscribe', fetch: server.fetch, ...options });
  client = c;
  const events: string[] = [];
  const listen = (sub: string, opts = {}) =>
    c.subscribe(sub, (e: SSEEvent) => events.push(`${sub} ${e.channel} ${e.raw}${e.id ? ' #' + e.id : ''}`), opts);
  return { server, client: c, events, listen };
}

/** A client with `subs` on an open stream that sent its session token (and, with `last`, one event of the first sub). */
async function openSession(subs: string[], { last, token = 'tok', ...options }: { last?: number; token?: string } & Partial<ClientOptions> = {}) {
  const t = setup(options);
  const offs = Object.fromEntries(subs.map((s) => [s, t.listen(s)]));
  await tick(50);
  const stream = t.server.take();
  const body = stream.open();
  if (token) body.event('sse-session', token);
  if (last !== undefined) body.event(subs[0]!, 'e' + last, last);
  await tick();
  return { ...t, offs, stream, body };
}

const change = (req: FakeRequest) => ({
  method: req.method,
  path: req.url.pathname,
  session: req.form.get('session'),
  add: req.form.get('add'),
  remove: req.form.get('remove'),
  last: req.form.get('last_event_id'),
});

describe('changes in place', () => {
  it('a route change is POSTed as one change on the same stream; the added one goes live on 200', async () => {
    const { server, client, events, offs, listen, stream, body } = await openSession(['a', 'b'], {
      last: 1,
      headers: { 'X-App': '1' },
      credentials: 'include',
    });
    expect(events).toEqual(['a a e1 #1']);
    offs.a!();
    listen('logs:w1:c');
    listen('dashboards:*');
    await tick(50);
    const post = server.take();
    expect(change(post)).toEqual({
      method: 'POST',
      path: '/events/subscribe',
      session: 'tok',
      add: 'dashboards:*,logs:w1:c',
      remove: 'a',
      last: '1',
    });
    // Each name encoded once, the commas literal.
    expect(post.init.body).toBe('session=tok&add=dashboards%3A*,logs%3Aw1%3Ac&remove=a&last_event_id=1');
    expect(post.headers.get('content-type')).toBe('application/x-www-form-urlencoded');
    expect(post.headers.get('x-app')).toBe('1');
    expect(post.init.credentials).toBe('include');
    expect(stream.aborted).toBe(false);
    expect(client.status).toBe('open');
    expect(client.activeSubscriptions).toEqual(['b', 'dashboards:*', 'logs:w1:c']);
    expect(client.subscriptionStatus('b').status).toBe('live');
    expect(client.subscriptionStatus('logs:w1:c').status).toBe('connecting');
    // The removed one's listener gets nothing more at once, even before the answer.
    body.event('a', 'late', 2);
    await tick();
    expect(events).toEqual(['a a e1 #1']);

    post.reply(200, 'b,dashboards:*,logs:w1:c\n');
    await tick();
    expect(client.subscriptionStatus('logs:w1:c').status).toBe('live');
    expect(client.subscriptionStatus('dashboards:*').status).toBe('live');
    body.event('sse-channels', 'b,dashboards:*,logs:w1:c');
    body.event('logs:w1:c', 'c1', 3);
    body.event('dashboards:7', 'd', 4);
    await tick();
    expect(events.slice(1)).toEqual(['logs:w1:c logs:w1:c c1 #3', 'dashboards:* dashboards:7 d #4']);
    expect(server.pending).toBe(0);
    expect(stream.aborted).toBe(false);
  });

  it('sse-session and sse-channels never reach listeners, with or without subscribeUrl', async () => {
    for (const subscribeUrl of ['/events/subscribe', undefined]) {
      const { server, events, body } = await openSession(['sse-session', 'sse-channels', 'x'], { subscribeUrl });
      body.event('sse-channels', 'x');
      body.event('x', '1');
      await tick();
      expect(events).toEqual(['x x 1']);
      expect(server.pending).toBe(0);
      client!.close();
    }
  });

  it('the stream\'s sse-channels makes the added ones live before the 200; the 200 after it changes nothing', async () => {
    const { server, client, listen, body } = await openSession(['a'], { last: 5 });
    const statuses: string[] = [];
    listen('b');
    await tick(50);
    const post = server.take();
    body.event('sse-channels', 'a,b');
    await tick();
    expect(client.subscriptionStatus('b').status).toBe('live');
    client.onStatus((s) => statuses.push(s));
    post.reply(200, 'a,b');
    await tick();
    expect(client.subscriptionStatus('b').status).toBe('live');
    // A stale sse-channels (an earlier change) does not undo it.
    body.event('sse-channels', 'a');
    await tick();
    expect(client.subscriptionStatus('b').status).toBe('live');
    expect(statuses).toEqual([]);
    expect(server.pending).toBe(0);
  });

  it('one change in flight at a time; changes meanwhile go together into the next one', async () => {
    const { server, client, offs, listen } = await openSession(['a', 'b'], { last: 7 });
    listen('c');
    await tick(50);
    const first = server.take();
    expect(change(first)).toMatchObject({ add: 'c', remove: null, last: '7' });
    offs.b!();
    listen('d');
    await tick(50);
    listen('e');
    await tick(500);
    expect(server.pending).toBe(0);
    first.reply(200, 'a,b,c');
    await tick();
    const second = server.take();
    expect(change(second)).toMatchObject({ add: 'd,e', remove: 'b' });
    expect(client.subscriptionStatus('c').status).toBe('live');
    expect(client.subscriptionStatus('d').status).toBe('connecting');
    second.reply(200, 'a,c,d,e');
    await tick(500);
    expect(server.pending).toBe(0);
    expect(['a', 'c', 'd', 'e'].map((s) => client.subscriptionStatus(s).status)).toEqual(['live', 'live', 'live', 'live']);
  });

  it('a change that is undone before it is sent sends nothing; without ids no last_event_id', async () => {
    const { server, listen, offs } = await openSession(['a']);
    const off = listen('b');
    off();
    await tick(100);
    expect(server.pending).toBe(0);
    offs.a!();
    listen('c');
    await tick(50);
    const post = server.take();
    expect(change(post)).toMatchObject({ add: 'c', remove: 'a', last: null });
  });

  it('the last unsubscribe still ends the stream (no change to an empty set)', async () => {
    const { server, client, offs, stream } = await openSession(['a']);
    offs.a!();
    await tick(50);
    expect(stream.aborted).toBe(true);
    expect(server.pending).toBe(0);
    expect(client.status).toBe('idle');
  });
});

describe('answers', () => {
  it('403 not allowed: those are denied (onDenied once), the rest is sent again with the same last_event_id', async () => {
    const { server, client, listen, body } = await openSession(['a'], { last: 3 });
    const denied = vi.fn();
    listen('b', { onDenied: denied });
    listen('c');
    await tick(50);
    const post = server.take();
    body.event('a', 'x', 4); // the stream goes on meanwhile
    await tick();
    post.reply(403, 'sse: not allowed: b\n');
    await tick();
    expect(client.subscriptionStatus('b')).toEqual({ status: 'denied', reason: 'sse: not allowed: b' });
    expect(denied).toHaveBeenCalledWith('b', 'sse: not allowed: b');
    const retry = server.take();
    expect(change(retry)).toMatchObject({ add: 'c', remove: null, last: '3' });
    retry.reply(200, 'a,c');
    await tick();
    expect(client.subscriptionStatus('c').status).toBe('live');
    expect(client.activeSubscriptions).toEqual(['a', 'c']);
    expect(server.pending).toBe(0);
  });

  it('403 naming a channel kept from before (grants changed): it is denied and removed in place', async () => {
    const { server, client, listen } = await openSession(['a', 'k']);
    listen('b');
    await tick(50);
    server.take().reply(403, 'sse: not allowed: k');
    await tick();
    expect(client.subscriptionStatus('k').status).toBe('denied');
    const retry = server.take();
    expect(change(retry)).toMatchObject({ add: 'b', remove: 'k' });
  });

  it('400 quoting a subscription denies it and retries the rest; 400 quoting none reconnects', async () => {
    const { server, client, listen, stream } = await openSession(['a'], { last: 9 });
    listen('dashboards:*');
    listen('b');
    await tick(50);
    const reason = 'sse: "dashboards:*" is a pattern; this location serves channels, not patterns';
    server.take().reply(400, reason);
    await tick();
    expect(client.subscriptionStatus('dashboards:*')).toEqual({ status: 'denied', reason });
    const retry = server.take();
    expect(change(retry)).toMatchObject({ add: 'b' });
    retry.reply(400, 'sse: 40 channels requested, at most 32 allowed');
    await tick();
    const again = server.take();
    expect(again.method).toBe('GET');
    expect(again.channels).toEqual(['a', 'b']);
    expect(again.headers.get('last-event-id')).toBe('9');
    expect(stream.aborted).toBe(true);
  });

  for (const [what, answer] of [
    ['404 (the stream is gone)', (r: FakeRequest) => r.reply(404, 'sse: unknown session')],
    ['503', (r: FakeRequest) => r.reply(503, 'sse: redis is unavailable')],
    ['504', (r: FakeRequest) => r.reply(504, 'sse: the stream did not answer')],
    ['405 (not an sse_subscribe location)', (r: FakeRequest) => r.reply(405, '<html></html>', 'text/html')],
    ['403 naming none (another user)', (r: FakeRequest) => r.reply(403, 'sse: the session belongs to another user')],
    ['a network error', (r: FakeRequest) => r.fail()],
  ] as const) {
    it(`${what}: reconnects with Last-Event-ID, as without sessions`, async () => {
      const { server, client, listen, stream, events } = await openSession(['a'], { last: 12 });
      listen('b');
      await tick(50);
      answer(server.take());
      await tick();
      const req = server.take();
      expect(req.method).toBe('GET');
      expect(req.channels).toEqual(['a', 'b']);
      expect(req.headers.get('last-event-id')).toBe('12');
      expect(stream.aborted).toBe(true);
      expect(client.status).toBe('open');
      expect(client.subscriptionStatus('a').status).toBe('live');
      const body = req.open();
      body.event('b', 'b1', 13);
      await tick();
      expect(events).toEqual(['a a e12 #12', 'b b b1 #13']);
      expect(client.subscriptionStatus('b').status).toBe('live');
    });
  }

  it('no answer within 10 s: the change is abandoned and the client reconnects', async () => {
    const { server, listen, stream } = await openSession(['a'], { last: 2 });
    listen('b');
    await tick(50);
    const post = server.take();
    await tick(9999);
    expect(server.pending).toBe(0);
    await tick(1);
    expect(post.aborted).toBe(true);
    const req = server.take();
    expect(req.channels).toEqual(['a', 'b']);
    expect(stream.aborted).toBe(true);
  });

  it('a 200 that did not make the change reconnects instead of asking again', async () => {
    const { server, listen } = await openSession(['a']);
    listen('b');
    await tick(50);
    server.take().reply(200, 'a');
    await tick();
    const req = server.take();
    expect(req.method).toBe('GET');
    expect(req.channels).toEqual(['a', 'b']);
  });
});

describe('the token', () => {
  it('a stream without sse-session (server not offering): changes reconnect', async () => {
    const { server, listen, stream } = await openSession(['a'], { last: 4, token: '' });
    listen('b');
    await tick(50);
    const req = server.take();
    expect(req.method).toBe('GET');
    expect(req.channels).toEqual(['a', 'b']);
    expect(req.headers.get('last-event-id')).toBe('4');
    expect(stream.aborted).toBe(true);
  });

  it('without subscribeUrl a stream\'s sse-session is ignored: changes reconnect', async () => {
    const { server, listen } = await openSession(['a'], { subscribeUrl: undefined });
    listen('b');
    await tick(50);
    expect(server.take().method).toBe('GET');
  });

  it('a new stream drops the token: until its own sse-session a change reconnects, then uses the new token', async () => {
    const { server, listen, body } = await openSession(['a'], { retry: { initialMs: 10 } });
    body.end();
    await tick(10);
    const second = server.take();
    second.open();
    await tick();
    listen('b');
    await tick(50);
    const third = server.take();
    expect(third.method).toBe('GET');
    expect(second.aborted).toBe(true);
    third.open().event('sse-session', 'tok3');
    await tick();
    listen('c');
    await tick(50);
    expect(change(server.take())).toMatchObject({ session: 'tok3', add: 'c' });
  });

  it('a change in flight when the stream breaks is abandoned; the reconnection asks for everything', async () => {
    const { server, listen, body } = await openSession(['a'], { last: 1, retry: { initialMs: 10 } });
    listen('b');
    await tick(50);
    const post = server.take();
    body.fail();
    await tick();
    expect(post.aborted).toBe(true);
    while (!server.pending) await tick(10);
    const req = server.take();
    expect(req.method).toBe('GET');
    expect(req.channels).toEqual(['a', 'b']);
    // The change's outcome is unknown: the new stream resumes from its last_event_id.
    expect(req.headers.get('last-event-id')).toBe('1');
  });
});

describe('replay of added channels (history)', () => {
  it('events of the added channel below the last id are delivered once, in order; kept channels stay de-duplicated', async () => {
    const { server, client, listen, events, body } = await openSession(['a'], { last: 10 });
    listen('b');
    await tick(50);
    const post = server.take();
    expect(change(post).last).toBe('10');
    // Meanwhile the stream goes on with a.
    body.event('a', 'a11', 11);
    body.event('a', 'a14', 14);
    await tick();
    post.reply(200, 'a,b');
    body.event('sse-channels', 'a,b');
    // The server replays b after 10, merged in id order with the live events.
    body.event('b', 'b12', 12);
    body.event('b', 'b13', 13);
    body.event('b', 'b12', 12); // a repeat is dropped
    body.event('a', 'a11', 11); // so is a repeat of a kept channel
    body.event('b', 'b15', 15);
    body.event('a', 'a16', 16);
    await tick();
    expect(events).toEqual([
      'a a e10 #10',
      'a a a11 #11',
      'a a a14 #14',
      'b b b12 #12',
      'b b b13 #13',
      'b b b15 #15',
      'a a a16 #16',
    ]);
    expect(client.lastEventId).toBe('16');
    // The window ended with the first event above the change's position (14).
    body.event('b', 'b13', 13);
    await tick();
    expect(events).toHaveLength(7);
  });

  it('a reconnection during a replay resumes from the change\'s id: nothing lost, nothing twice', async () => {
    const { server, client, listen, events, body } = await openSession(['a'], { last: 10, retry: { initialMs: 10 } });
    listen('b');
    await tick(50);
    const post = server.take();
    body.event('a', 'a11', 11);
    body.event('a', 'a14', 14);
    post.reply(200, 'a,b');
    body.event('sse-channels', 'a,b');
    body.event('b', 'b12', 12);
    await tick();
    body.fail(); // before b13 was replayed
    let req: FakeRequest | undefined;
    while (!req) {
      await tick(10);
      if (server.pending) req = server.take();
    }
    expect(req.channels).toEqual(['a', 'b']);
    expect(req.headers.get('last-event-id')).toBe('10');
    const again: FakeBody = req.open();
    for (const [ch, id] of [['a', 11], ['b', 12], ['b', 13], ['a', 14], ['b', 15]] as const) again.event(ch, `${ch}${id}`, id);
    await tick();
    expect(events).toEqual(['a a e10 #10', 'a a a11 #11', 'a a a14 #14', 'b b b12 #12', 'b b b13 #13', 'b b b15 #15']);
    expect(client.lastEventId).toBe('15');
  });

  it('a channel removed and added again: its events still in flight are not delivered twice by the replay', async () => {
    const { server, listen, events, body, offs } = await openSession(['a', 'x'], { last: 10 });
    offs.x!();
    await tick(50);
    const remove = server.take();
    expect(change(remove)).toMatchObject({ remove: 'x' });
    remove.reply(200, 'a');
    await tick();
    listen('x');
    await tick(50);
    const add = server.take();
    expect(change(add)).toMatchObject({ add: 'x', last: '10' });
    // x's events written before the removal took effect arrive now.
    body.event('x', 'x11', 11);
    body.event('a', 'a12', 12);
    add.reply(200, 'a,x');
    body.event('sse-channels', 'a,x');
    body.event('x', 'x11', 11); // replayed: seen already
    body.event('x', 'x13', 13);
    await tick();
    expect(events).toEqual(['a a e10 #10', 'x x x11 #11', 'a a a12 #12', 'x x x13 #13']);
  });

  it('the replay filter on its own', () => {
    const f = createReplayFilter();
    expect(f.verdict('a', '5', '4')).toBe('new');
    expect(f.verdict('a', '4', '5')).toBe('old');
    expect(f.verdict('a', undefined, '5')).toBe('new');
    const w = f.open(['logs:*'], '5');
    expect(f.verdict('logs:x', '4', '9')).toBe('old'); // not above the floor
    expect(f.verdict('logs:x', '6', '9')).toBe('replay');
    expect(f.verdict('logs:x', '6', '9')).toBe('old'); // once
    expect(f.verdict('other', '7', '9')).toBe('old');
    expect(f.verdict('a', '10', '9')).toBe('new'); // no top yet: the window stays
    expect(f.verdict('logs:y', '8', '10')).toBe('replay');
    f.effective(['a', 'logs:*'], '10');
    expect(w.top).toBe('10');
    expect(f.verdict('logs:y', '10', '10')).toBe('old'); // seen as new above
    expect(f.resume('10')).toBe('5');
    expect(f.verdict('logs:z', '11', '10')).toBe('new'); // above top: the window ends
    expect(f.verdict('logs:z', '9', '11')).toBe('old');
    expect(f.resume('11')).toBe('11');
    const v = f.open(['b'], '20');
    f.close(v);
    expect(f.verdict('b', '21', '25')).toBe('old');
    // A window that never ends is given up after a minute.
    f.open(['c'], '30');
    vi.advanceTimersByTime(60001);
    expect(f.resume('40')).toBe('40');
    expect(f.verdict('c', '31', '40')).toBe('old');
  });
});
