// shareAcrossTabs: tabs are clients in this process, sharing node's
// BroadcastChannel and a fake Web Locks manager.
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { createClient, type Client, type SSEEvent } from '../src/index';
import { fakeServer, settle } from './fake-server';

/** Web Locks, exclusive mode: one holder per name, the others queue in order. */
class FakeLocks {
  private held = new Set<string>();
  private queues = new Map<string, (() => void)[]>();

  request(name: string, options: { signal?: AbortSignal }, cb: (lock: { name: string }) => Promise<unknown>): Promise<unknown> {
    return new Promise((resolve, reject) => {
      const grant = (): void => {
        this.held.add(name);
        Promise.resolve()
          .then(() => cb({ name }))
          .then(resolve, reject)
          .finally(() => {
            this.held.delete(name);
            this.queues.get(name)?.shift()?.();
          });
      };
      if (!this.held.has(name)) return grant();
      const queue = this.queues.get(name) ?? [];
      this.queues.set(name, queue);
      queue.push(grant);
      options.signal?.addEventListener('abort', () => {
        const i = queue.indexOf(grant);
        if (i >= 0) {
          queue.splice(i, 1);
          reject(new DOMException('aborted', 'AbortError'));
        }
      });
    });
  }
}

const tabs: Client[] = [];
const channels: BroadcastChannel[] = [];

beforeEach(() => {
  vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'Date'] });
});
afterEach(async () => {
  tabs.splice(0).forEach((t) => t.close());
  channels.splice(0).forEach((c) => c.close());
  await settle();
  vi.useRealTimers();
  vi.unstubAllGlobals();
});

async function tick(ms = 0) {
  await vi.advanceTimersByTimeAsync(ms);
  await settle(10);
}

function browser(withLocks = true, subscribeUrl?: string) {
  if (withLocks) vi.stubGlobal('navigator', { locks: new FakeLocks() });
  const server = fakeServer();
  const tab = (name: string) => {
    const client = createClient({ url: '/events', fetch: server.fetch, shareAcrossTabs: true, subscribeUrl });
    tabs.push(client);
    const events: string[] = [];
    const listen = (sub: string, opts = {}) =>
      client.subscribe(sub, (e: SSEEvent) => events.push(`${name} ${e.channel} ${e.raw}${e.id ? ' #' + e.id : ''}`), opts);
    return { client, events, listen };
  };
  return { server, tab };
}

describe('shareAcrossTabs', () => {
  it('one connection for the union of the tabs\' demand; events and statuses reach every tab', async () => {
    const { server, tab } = browser();
    const A = tab('A');
    const B = tab('B');
    A.listen('a');
    await tick(50);
    const first = server.take();
    expect(first.channels).toEqual(['a']);
    const body1 = first.open();
    body1.event('a', '1', 1);
    await tick();

    B.listen('b');
    await tick(50); // B's debounce, then its demand reaches A
    await tick(50); // A's debounce
    expect(server.pending).toBe(1);
    const second = server.take();
    expect(first.aborted).toBe(true);
    expect(second.channels).toEqual(['a', 'b']);
    expect(second.headers.get('last-event-id')).toBe('1');
    const body = second.open();
    body.event('a', '2', 2);
    body.event('b', '3', 3);
    await tick();

    expect(A.events).toEqual(['A a 1 #1', 'A a 2 #2']);
    expect(B.events).toEqual(['B b 3 #3']);
    expect(B.client.lastEventId).toBe('3');
    expect(B.client.status).toBe('open');
    expect(B.client.subscriptionStatus('b')).toEqual({ status: 'live' });
    expect(B.client.activeSubscriptions).toEqual(['a', 'b']);
    expect(server.pending).toBe(0);
  });

  it('when the leader goes, another tab takes over from the highest id any tab saw: nothing lost or duplicated', async () => {
    const { server, tab } = browser();
    const A = tab('A');
    const B = tab('B');
    const C = tab('C');
    A.listen('a');
    await tick(50);
    server.take().open();
    B.listen('b');
    C.listen('c');
    await tick(50);
    await tick(50);
    const req = server.take();
    expect(req.channels).toEqual(['a', 'b', 'c']);
    const body = req.open();
    body.event('b', 'b1', 10);
    body.event('c', 'c1', 11);
    await tick();
    expect(server.pending).toBe(0);

    // A third party tab that saw a later id (its messages were in flight).
    const spy = new BroadcastChannel('nginx-sse:/events');
    channels.push(spy);
    spy.onmessage = ({ data }) => {
      if (data.t === 'h') spy.postMessage({ t: 'd', f: 'spy', s: [], i: '12' });
    };

    A.client.close();
    await tick();
    await tick(50);
    expect(req.aborted).toBe(true);
    const takeover = server.take();
    expect(takeover.channels).toEqual(['b', 'c']);
    expect(takeover.headers.get('last-event-id')).toBe('12');
    const replay = takeover.open();
    replay.event('c', 'c1', 11); // already seen: dropped by every tab
    replay.event('b', 'b2', 13);
    replay.event('c', 'c2', 14);
    await tick();
    expect(B.events).toEqual(['B b b1 #10', 'B b b2 #13']);
    expect(C.events).toEqual(['C c c1 #11', 'C c c2 #14']);
    expect(C.client.subscriptionStatus('c')).toEqual({ status: 'live' });
    expect(server.pending).toBe(0);
  });

  it('a denial by the server reaches the follower that asked', async () => {
    const { server, tab } = browser();
    const A = tab('A');
    const B = tab('B');
    const onDenied = vi.fn();
    A.listen('a');
    await tick(50);
    server.take().open();
    B.listen('secret', { onDenied });
    await tick(50);
    await tick(50);
    server.take().reply(403, 'sse: not allowed: secret\n');
    await tick();
    expect(server.take().channels).toEqual(['a']);
    expect(B.client.subscriptionStatus('secret')).toEqual({ status: 'denied', reason: 'sse: not allowed: secret' });
    expect(onDenied).toHaveBeenCalledWith('secret', 'sse: not allowed: secret');
  });

  it('a follower that closes takes its demand away', async () => {
    const { server, tab } = browser();
    const A = tab('A');
    const B = tab('B');
    A.listen('a');
    B.listen('b');
    await tick(50);
    await tick(50);
    while (server.pending > 1) server.take();
    expect(server.take().channels).toEqual(['a', 'b']);
    B.client.close();
    await tick();
    await tick(50);
    expect(server.take().channels).toEqual(['a']);
  });

  it('a follower\'s new channel is added in place by the leader; its replay below the last id reaches the follower once', async () => {
    const { server, tab } = browser(true, '/events/subscribe');
    const A = tab('A');
    const B = tab('B');
    A.listen('a');
    await tick(50);
    const stream = server.take();
    const body = stream.open();
    body.event('sse-session', 'tok');
    body.event('a', 'a1', 1);
    await tick();
    B.listen('b');
    await tick(50);
    await tick(50);
    const post = server.take();
    expect(post.method).toBe('POST');
    expect(post.form.get('add')).toBe('b');
    expect(post.form.get('last_event_id')).toBe('1');
    body.event('a', 'a3', 3);
    post.reply(200, 'a,b');
    body.event('sse-channels', 'a,b');
    body.event('b', 'b2', 2);
    body.event('b', 'b2', 2);
    body.event('b', 'b4', 4);
    await tick();
    expect(stream.aborted).toBe(false);
    expect(A.events).toEqual(['A a a1 #1', 'A a a3 #3']);
    expect(B.events).toEqual(['B b b2 #2', 'B b b4 #4']);
    expect(B.client.subscriptionStatus('b')).toEqual({ status: 'live' });
    expect(B.client.lastEventId).toBe('4');
    expect(server.pending).toBe(0);
  });

  it('without Web Locks every tab has its own connection', async () => {
    vi.stubGlobal('navigator', {});
    const { server, tab } = browser(false);
    tab('A').listen('a');
    tab('B').listen('b');
    await tick(50);
    expect(server.requests.map((r) => r.channels)).toEqual([['a'], ['b']]);
  });
});
