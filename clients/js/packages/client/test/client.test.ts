// createClient against a scripted server: requests, reconnections, errors
// per subscription, backoff, routing, de-duplication.
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { createClient, type Client, type ClientOptions, type SSEEvent } from '../src/index';
import { fakeServer, settle } from './fake-server';

let client: Client | undefined;

beforeEach(() => {
  vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'Date'] });
});
afterEach(() => {
  client?.close();
  client = undefined;
  vi.useRealTimers();
  vi.restoreAllMocks();
  vi.unstubAllGlobals();
});

function setup(options: Partial<ClientOptions> = {}) {
  const server = fakeServer();
  const c = createClient({ url: '/events', fetch: server.fetch, ...options });
  client = c;
  const events: string[] = [];
  const listen = (sub: string, opts = {}) =>
    c.subscribe(sub, (e: SSEEvent) => events.push(`${sub} ${e.channel} ${e.raw}${e.id ? ' #' + e.id : ''}`), opts);
  return { server, client: c, events, listen };
}

/** Advances fake time, letting the fetches and body reads run. */
async function tick(ms = 0) {
  await vi.advanceTimersByTimeAsync(ms);
  await settle();
}

/** Waits (in steps of 10 ms of fake time) for the next request; returns it and the time waited. */
async function waitRequest(server: ReturnType<typeof fakeServer>) {
  let waited = 0;
  while (!server.pending && waited < 100000) {
    await tick(10);
    waited += 10;
  }
  return { req: server.take(), waited };
}

describe('requests', () => {
  it('a burst of subscriptions makes one request, sorted, with the stream headers', async () => {
    const { server, client, listen } = setup({ headers: { 'X-App': '1' }, credentials: 'include' });
    listen('metrics:w1');
    listen('dashboards:*');
    listen('logs:w1:nightly-sales');
    listen('metrics:w1');
    expect(client.status).toBe('idle');
    await tick(49);
    expect(server.pending).toBe(0);
    await tick(1);
    expect(server.pending).toBe(1);
    const req = server.take();
    expect(req.url.pathname).toBe('/events');
    expect(req.url.search).toBe('?channels=dashboards%3A*,logs%3Aw1%3Anightly-sales,metrics%3Aw1');
    expect(req.channels).toEqual(['dashboards:*', 'logs:w1:nightly-sales', 'metrics:w1']);
    expect(req.headers.get('accept')).toBe('text/event-stream');
    expect(req.headers.get('x-app')).toBe('1');
    expect(req.headers.has('last-event-id')).toBe(false);
    expect(req.init.credentials).toBe('include');
    expect(client.status).toBe('connecting');
    expect(client.activeSubscriptions).toEqual(['dashboards:*', 'logs:w1:nightly-sales', 'metrics:w1']);
    expect(client.subscriptionStatus('metrics:w1')).toEqual({ status: 'connecting' });
    req.open().retry(3000);
    await tick();
    expect(client.status).toBe('open');
    expect(client.subscriptionStatus('metrics:w1')).toEqual({ status: 'live' });
    expect(client.subscriptionStatus('nothing')).toEqual({ status: 'idle' });
  });

  it('defaults: same-origin credentials, a url that already has a query, another channels parameter', async () => {
    const server = fakeServer('c');
    client = createClient({ url: '/stream?ws=1', channelsParam: 'c', fetch: server.fetch });
    client.subscribe('a', () => {});
    await tick(50);
    const req = server.take();
    expect(req.url.search).toBe('?ws=1&c=a');
    expect(req.init.credentials).toBe('same-origin');
  });

  it('a route change (3 unmount, 4 mount) reconnects exactly once, with Last-Event-ID', async () => {
    const { server, client, listen, events } = setup();
    const old = ['a', 'b', 'c'].map((s) => listen(s));
    await tick(50);
    const first = server.take();
    const body = first.open();
    body.event('a', '1', 1);
    body.event('b', '2', 2);
    await tick();
    expect(client.lastEventId).toBe('2');

    old.forEach((off) => off());
    ['d', 'e', 'f', 'g'].forEach((s) => listen(s));
    await tick(200);
    expect(server.pending).toBe(1);
    const second = server.take();
    expect(first.aborted).toBe(true);
    expect(second.channels).toEqual(['d', 'e', 'f', 'g']);
    expect(second.headers.get('last-event-id')).toBe('2');
    expect(events).toEqual(['a a 1 #1', 'b b 2 #2']);
  });

  it('no reconnect when the union does not change (unsubscribe and subscribe again)', async () => {
    const { server, listen } = setup();
    const off = listen('a');
    listen('b');
    await tick(50);
    server.take().open();
    await tick();
    off();
    listen('a');
    await tick(500);
    expect(server.pending).toBe(0);
  });

  it('while the subscriptions switch, those that stay are live, the new one connecting', async () => {
    const { server, client, listen } = setup();
    listen('a');
    await tick(50);
    server.take().open();
    await tick();
    listen('b');
    await tick(50);
    const req = server.take();
    expect(client.status).toBe('open');
    expect(client.subscriptionStatus('a').status).toBe('live');
    expect(client.subscriptionStatus('b').status).toBe('connecting');
    req.open();
    await tick();
    expect(client.subscriptionStatus('b').status).toBe('live');
  });

  it('the last unsubscribe ends the stream: idle, no request', async () => {
    const { server, client, listen } = setup();
    const off = listen('a');
    await tick(50);
    const req = server.take();
    req.open();
    await tick();
    off();
    off(); // idempotent
    await tick(50);
    expect(req.aborted).toBe(true);
    expect(client.status).toBe('idle');
    expect(client.activeSubscriptions).toEqual([]);
    await tick(60000);
    expect(server.pending).toBe(0);
  });
});

describe('events', () => {
  it('events split across chunks arrive whole; ids ≤ the last one are dropped', async () => {
    const { server, client, listen, events } = setup();
    listen('logs:a');
    listen('logs:*');
    await tick(50);
    const body = server.take().open();
    body.write('retry: 3000\n\n: hello\n\n', 3);
    body.write('event: logs:a\nid: 7\ndata: {"é":"€ 𝄞"}\ndata: second line\n\n', 1);
    body.event('logs:b', 'x', 8);
    body.event('logs:a', 'replayed', 8);
    body.event('logs:a', 'old', 3);
    body.event('logs:a', 'no id');
    body.event('logs:b', 'y', 10);
    await tick();
    expect(events).toEqual([
      'logs:a logs:a {"é":"€ 𝄞"}\nsecond line #7',
      'logs:* logs:a {"é":"€ 𝄞"}\nsecond line #7',
      'logs:* logs:b x #8',
      'logs:a logs:a no id',
      'logs:* logs:a no id',
      'logs:* logs:b y #10',
    ]);
    expect(client.lastEventId).toBe('10');
  });

  it('a replay after a reconnection delivers only what was not seen', async () => {
    const { server, listen, events } = setup({ retry: { initialMs: 10 } });
    listen('c');
    await tick(50);
    const body = server.take().open();
    body.event('c', '1', 1);
    body.event('c', '2', 2);
    body.end();
    await tick(10);
    const req = server.take();
    expect(req.headers.get('last-event-id')).toBe('2');
    const replay = req.open();
    replay.event('c', '2', 2); // the server would not, the client drops it anyway
    replay.event('c', '3', 3);
    await tick();
    expect(events).toEqual(['c c 1 #1', 'c c 2 #2', 'c c 3 #3']);
  });

  it('sse-gap calls onGap of the subscriptions it names', async () => {
    const { server, listen, events } = setup();
    const gaps: string[] = [];
    listen('logs:a', { onGap: (c: string) => gaps.push(c) });
    listen('logs:b', { onGap: (c: string) => gaps.push('b:' + c) });
    await tick(50);
    server.take().open().event('sse-gap', 'logs:a');
    await tick();
    expect(gaps).toEqual(['logs:a']);
    expect(events).toEqual([]);
  });

  it('parse option and JSON by default', async () => {
    const { server, client } = setup();
    const got: unknown[] = [];
    client.subscribe('c', (e) => got.push(e.data));
    client.subscribe('c', (e) => got.push(e.data), { parse: (raw) => raw.toUpperCase() });
    await tick(50);
    const body = server.take().open();
    body.event('c', '{"v":1}');
    body.event('c', 'plain text');
    await tick();
    expect(got).toEqual([{ v: 1 }, '{"V":1}', 'plain text', 'PLAIN TEXT']);
  });
});

describe('errors, per subscription', () => {
  it('403 naming subscriptions: those are denied, the others reconnect at once', async () => {
    const onAuthError = vi.fn();
    const { server, client, listen, events } = setup({ onAuthError });
    const denied: string[] = [];
    listen('a');
    const offB = listen('b', { onDenied: (s: string, r: string) => denied.push(`${s}: ${r}`) });
    listen('c');
    await tick(50);
    server.take().reply(403, 'sse: not allowed: b, c\n');
    await tick();
    const retry = server.take();
    expect(retry.channels).toEqual(['a']);
    expect(client.subscriptionStatus('b')).toEqual({ status: 'denied', reason: 'sse: not allowed: b, c' });
    expect(client.subscriptionStatus('c').status).toBe('denied');
    expect(denied).toEqual(['b: sse: not allowed: b, c']);
    expect(onAuthError).not.toHaveBeenCalled();
    retry.open().event('a', 'ok');
    await tick();
    expect(events).toEqual(['a a ok']);
    expect(client.subscriptionStatus('a').status).toBe('live');

    // Denied stays denied across other changes...
    listen('d');
    await tick(50);
    expect(server.take().channels).toEqual(['a', 'd']);
    listen('b');
    await tick(50);
    expect(server.pending).toBe(0);
    expect(denied).toHaveLength(1);

    // ...until every listener of it leaves and it is subscribed again.
    offB();
    await tick();
    expect(client.subscriptionStatus('b').status).toBe('denied'); // the second listener is still there
    client.close();
    expect(client.subscriptionStatus('b').status).toBe('closed');
  });

  it('a denied subscription unsubscribed and subscribed again is asked for again', async () => {
    const { server, client, listen } = setup();
    listen('a');
    const off = listen('b');
    await tick(50);
    server.take().reply(403, 'sse: not allowed: b\n');
    await tick();
    server.take().open();
    await tick();
    off();
    listen('b'); // within the debounce window
    expect(client.subscriptionStatus('b').status).toBe('connecting');
    await tick(50);
    expect(server.take().channels).toEqual(['a', 'b']);
  });

  it('a clean end (revocation: grants may have changed) asks again for 403-denied ones, not for sse-refused ones', async () => {
    const { server, client, listen } = setup({ retry: { initialMs: 100 } });
    listen('a');
    listen('b');
    listen('c');
    await tick(50);
    server.take().reply(403, 'sse: not allowed: b\n');
    await tick();
    const body = server.take().open();
    body.event('sse-refused', 'c');
    await tick();
    expect(client.activeSubscriptions).toEqual(['a']);
    body.end();
    await tick();
    expect(client.subscriptionStatus('b').status).toBe('reconnecting');
    expect(client.subscriptionStatus('c').status).toBe('denied');
    await tick(100);
    const again = server.take();
    expect(again.channels).toEqual(['a', 'b']);
    again.open();
    await tick();
    expect(client.subscriptionStatus('b').status).toBe('live');
  });

  it('403 denying everything leaves the client idle, no request', async () => {
    const { server, client, listen } = setup();
    listen('a');
    await tick(50);
    server.take().reply(403, 'sse: not allowed: a\n');
    await tick(60000);
    expect(server.pending).toBe(0);
    expect(client.status).toBe('idle');
    expect(client.subscriptionStatus('a').status).toBe('denied');
  });

  it('403 naming nothing requested (auth service, invalid user) calls onAuthError and backs off', async () => {
    vi.spyOn(Math, 'random').mockReturnValue(0.5);
    const onAuthError = vi.fn();
    const { server, client, listen } = setup({ onAuthError });
    listen('a');
    await tick(50);
    server.take().reply(403, '<html>403 Forbidden</html>', 'text/html');
    await tick();
    expect(onAuthError).toHaveBeenCalledWith(403);
    expect(client.subscriptionStatus('a')).toEqual({ status: 'reconnecting', reason: 'HTTP 403' });
    await tick(499);
    expect(server.pending).toBe(0);
    await tick(1);
    expect(server.take().channels).toEqual(['a']);
  });

  it('400 naming a subscription denies it; the others reconnect at once', async () => {
    const { server, client, listen } = setup();
    listen('dashboards:*');
    listen('alerts:u1');
    await tick(50);
    const reason = 'sse: "dashboards:*" is a pattern; this location serves channels, not patterns';
    server.take().reply(400, reason + '\n');
    await tick();
    expect(server.take().channels).toEqual(['alerts:u1']);
    expect(client.subscriptionStatus('dashboards:*')).toEqual({ status: 'denied', reason });
  });

  it('400 overlap (should the rules ever differ): the second one named is denied', async () => {
    const { server, client, listen } = setup();
    listen('a:*');
    listen('b');
    await tick(50);
    server.take().reply(400, 'sse: "a:*" and "b" overlap; ask for each channel once\n');
    await tick();
    expect(server.take().channels).toEqual(['a:*']);
    expect(client.subscriptionStatus('b').status).toBe('denied');
  });

  it('400 naming no subscription: all are marked with the reason and back off', async () => {
    vi.spyOn(Math, 'random').mockReturnValue(0.5);
    const { server, client, listen } = setup();
    listen('a');
    listen('b');
    await tick(50);
    server.take().reply(400, 'sse: 40 channels requested, at most 32 allowed\n');
    await tick();
    expect(client.status).toBe('reconnecting');
    expect(client.subscriptionStatus('a')).toEqual({ status: 'reconnecting', reason: 'sse: 40 channels requested, at most 32 allowed' });
    await tick(499);
    expect(server.pending).toBe(0);
    await tick(1);
    expect(server.take().channels).toEqual(['a', 'b']);
  });

  it('401 calls onAuthError and backs off; an open stream clears the error', async () => {
    vi.spyOn(Math, 'random').mockReturnValue(0.5);
    const onAuthError = vi.fn();
    const { server, client, listen } = setup({ onAuthError });
    listen('a');
    await tick(50);
    server.take().reply(401, '<html>401</html>', 'text/html');
    await tick();
    expect(onAuthError).toHaveBeenCalledWith(401);
    expect(client.subscriptionStatus('a')).toEqual({ status: 'reconnecting', reason: 'HTTP 401' });
    await tick(500);
    server.take().open();
    await tick();
    expect(client.subscriptionStatus('a')).toEqual({ status: 'live' });
  });

  it('sse-refused: those are denied, the stream goes on, they are not asked for again', async () => {
    const { server, client, listen, events } = setup();
    const denied = vi.fn();
    listen('a');
    listen('b', { onDenied: denied });
    await tick(50);
    const body = server.take().open();
    body.event('sse-refused', 'b');
    body.event('a', '1');
    await tick();
    expect(client.subscriptionStatus('b')).toEqual({ status: 'denied', reason: 'sse-refused: b' });
    expect(denied).toHaveBeenCalledWith('b', 'sse-refused: b');
    expect(client.activeSubscriptions).toEqual(['a']);
    expect(events).toEqual(['a a 1']);
    await tick(100);
    expect(server.pending).toBe(0);
    // Redis refusals end the stream: the reconnection leaves b out.
    body.end();
    await tick(3000);
    expect(server.take().channels).toEqual(['a']);
  });

  it('invalid names are never sent: denied with the server\'s reason', async () => {
    const { server, client, listen } = setup();
    const denied = vi.fn();
    listen('bad name', { onDenied: denied });
    listen('sse:control');
    await tick(100);
    expect(server.pending).toBe(0);
    expect(client.subscriptionStatus('bad name').status).toBe('denied');
    expect(client.subscriptionStatus('bad name').reason).toMatch(/contains 0x20/);
    expect(denied).toHaveBeenCalledTimes(1);
    listen('ok');
    await tick(50);
    expect(server.take().channels).toEqual(['ok']);
  });

  it('overlapping subscriptions: the later one is kept out and served by the one that covers it', async () => {
    const { server, client, listen, events } = setup();
    const denied = vi.fn();
    const offAll = listen('dashboards:*');
    listen('dashboards:7', { onDenied: denied });
    await tick(50);
    const body = server.take();
    expect(body.channels).toEqual(['dashboards:*']);
    body.open().event('dashboards:7', '1', 1);
    await tick();
    expect(client.subscriptionStatus('dashboards:7')).toEqual({ status: 'live' });
    expect(denied).not.toHaveBeenCalled();
    expect(events).toEqual(['dashboards:* dashboards:7 1 #1', 'dashboards:7 dashboards:7 1 #1']);
    offAll();
    await tick(50);
    const next = server.take();
    expect(next.channels).toEqual(['dashboards:7']);
    next.open();
    await tick();
    expect(client.subscriptionStatus('dashboards:7')).toEqual({ status: 'live' });
  });

  it('a subscription that overlaps without being covered is denied "overlap"', async () => {
    const { server, client, listen } = setup();
    const denied = vi.fn();
    listen('a:*:c');
    listen('a:b:*', { onDenied: denied });
    await tick(50);
    server.take().open();
    await tick();
    expect(client.subscriptionStatus('a:b:*')).toEqual({ status: 'denied', reason: 'overlap' });
    expect(denied).toHaveBeenCalledWith('a:b:*', 'overlap');
  });
});

describe('reconnection', () => {
  it('backoff: grows on failures, honours retry:, resets once a stream delivered bytes, reconnects with Last-Event-ID', async () => {
    vi.spyOn(Math, 'random').mockReturnValue(0.5);
    const { server, client, listen } = setup();
    listen('a');
    await tick(50);
    const delays: number[] = [];
    const next = async () => {
      const { req, waited } = await waitRequest(server);
      delays.push(waited);
      return req;
    };
    server.take().reply(503, 'sse: shutting down');
    (await next()).fail();
    (await next()).reply(502, '');
    const open = await next();
    const body = open.open();
    body.retry(3000);
    body.event('a', 'x', 41);
    await tick();
    body.end(); // clean end: server reload or revocation
    await tick();
    expect(client.status).toBe('reconnecting');
    const resumed = await next();
    expect(resumed.headers.get('last-event-id')).toBe('41');
    resumed.reply(503);
    await next();
    // 1000·2^0, 1000·2^1, 1000·2^2 halved; then reset with the server's 3000; then 3000·2^1.
    expect(delays).toEqual([500, 1000, 2000, 1500, 3000]);
  });

  it('a stream that ends before its first byte does not reset the backoff', async () => {
    vi.spyOn(Math, 'random').mockReturnValue(0.5);
    const { server, listen } = setup({ retry: { initialMs: 100 } });
    listen('a');
    await tick(50);
    server.take().open().end();
    await tick(49);
    expect(server.pending).toBe(0);
    await tick(1);
    server.take().open().end();
    await tick(99);
    expect(server.pending).toBe(0);
    await tick(1);
    expect(server.pending).toBe(1);
  });

  it('backoff is capped by retry.maxMs (and initialMs overrides the server\'s retry)', async () => {
    vi.spyOn(Math, 'random').mockReturnValue(0.999);
    const { server, listen } = setup({ retry: { initialMs: 1000, maxMs: 4000 } });
    listen('a');
    await tick(50);
    const body = server.take().open();
    body.retry(3000);
    await tick();
    body.fail();
    const delays: number[] = [];
    for (let i = 0; i < 6; i++) {
      const { req, waited } = await waitRequest(server);
      delays.push(waited);
      req.reply(503);
    }
    // 999, 1998, then 3996 (rounded up to the 10 ms step)
    expect(delays).toEqual([1000, 2000, 4000, 4000, 4000, 4000]);
  });

  it('the online event reconnects at once', async () => {
    vi.spyOn(Math, 'random').mockReturnValue(0.99);
    vi.stubGlobal('window', new EventTarget());
    const { server, listen } = setup();
    listen('a');
    await tick(50);
    server.take().fail();
    await tick(100);
    expect(server.pending).toBe(0);
    window.dispatchEvent(new Event('online'));
    await tick();
    expect(server.pending).toBe(1);
  });

  it('closeWhenHidden: hidden ends the stream, visible resumes with Last-Event-ID', async () => {
    const doc = Object.assign(new EventTarget(), { visibilityState: 'visible' });
    vi.stubGlobal('window', new EventTarget());
    vi.stubGlobal('document', doc);
    const { server, client, listen } = setup({ closeWhenHidden: true });
    listen('a');
    await tick(50);
    const first = server.take();
    first.open().event('a', '1', 5);
    await tick();
    doc.visibilityState = 'hidden';
    doc.dispatchEvent(new Event('visibilitychange'));
    await tick(60000);
    expect(first.aborted).toBe(true);
    expect(server.pending).toBe(0);
    expect(client.status).toBe('reconnecting');
    doc.visibilityState = 'visible';
    doc.dispatchEvent(new Event('visibilitychange'));
    await tick();
    expect(server.take().headers.get('last-event-id')).toBe('5');
  });

  it('closeWhenHidden: a page that starts hidden connects when shown', async () => {
    const doc = Object.assign(new EventTarget(), { visibilityState: 'hidden' });
    vi.stubGlobal('window', new EventTarget());
    vi.stubGlobal('document', doc);
    const { server, listen } = setup({ closeWhenHidden: true });
    listen('a');
    await tick(1000);
    expect(server.pending).toBe(0);
    doc.visibilityState = 'visible';
    doc.dispatchEvent(new Event('visibilitychange'));
    await tick();
    expect(server.take().channels).toEqual(['a']);
  });

  it('close() aborts, closes every subscription; a later subscribe starts again', async () => {
    const { server, client, listen } = setup();
    const statuses: string[] = [];
    client.onStatus((s) => statuses.push(s));
    listen('a');
    await tick(50);
    const req = server.take();
    req.open();
    await tick();
    client.close();
    expect(req.aborted).toBe(true);
    expect(client.status).toBe('closed');
    expect(client.subscriptionStatus('a').status).toBe('closed');
    await tick(60000);
    expect(server.pending).toBe(0);
    listen('a'); // a second listener of a subscription still demanded
    await tick(50);
    expect(server.take().channels).toEqual(['a']);
    expect(statuses).toEqual(['connecting', 'open', 'closed', 'connecting']);
  });

  it('onStatus reports each change once; its unsubscribe works', async () => {
    vi.spyOn(Math, 'random').mockReturnValue(0);
    const { server, client, listen } = setup();
    const statuses: string[] = [];
    const off = client.onStatus((s) => statuses.push(s));
    listen('a');
    await tick(50);
    server.take().reply(500);
    await tick();
    server.take().open();
    await tick();
    off();
    client.close();
    expect(statuses).toEqual(['connecting', 'reconnecting', 'open']);
  });
});
