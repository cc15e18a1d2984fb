// Views: cached stores with stable snapshots, state kept across remounts,
// persisted to sessionStorage with the last event id so that a reload
// resumes without loss.
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { createClient, type Client, type SSEEvent } from '../src/index';
import { fakeServer, settle } from './fake-server';

const clients: Client[] = [];

beforeEach(() => {
  vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'Date'] });
});
afterEach(() => {
  clients.splice(0).forEach((c) => c.close());
  vi.useRealTimers();
  vi.unstubAllGlobals();
});

async function tick(ms = 0) {
  await vi.advanceTimersByTimeAsync(ms);
  await settle();
}

function setup(options = {}) {
  const server = fakeServer();
  const client = createClient({ url: '/events', fetch: server.fetch, ...options });
  clients.push(client);
  return { server, client };
}

/** A sessionStorage stand-in. */
function fakeSessionStorage() {
  const items = new Map<string, string>();
  return {
    items,
    getItem: (k: string) => items.get(k) ?? null,
    setItem: vi.fn((k: string, v: string) => void items.set(k, v)),
    removeItem: (k: string) => void items.delete(k),
  };
}

const append = (list: number[] | undefined, e: SSEEvent<number>) => [...(list ?? []), e.data];

describe('views', () => {
  it('the same (subscription, key) gives the same view; another key or reducer another', () => {
    const { client } = setup();
    const v = client.view('c');
    expect(client.view('c')).toBe(v);
    expect(client.view('c', { initial: 1 })).toBe(v);
    expect(client.view('c', { key: 'k' })).not.toBe(v);
    expect(client.view('c', { key: 'k' })).toBe(client.view('c', { key: 'k' }));
    expect(client.view('c', { reducer: append })).not.toBe(v);
    expect(client.view('c', { reducer: append })).toBe(client.view('c', { reducer: append }));
    expect(client.view('d')).not.toBe(v);
  });

  it('getSnapshot is the same object until something changes; the server snapshot never changes', async () => {
    const { server, client } = setup();
    const view = client.view<number, number[]>('c', { reducer: append, initial: [] });
    const server0 = view.getServerSnapshot();
    expect(server0).toEqual({ data: [], status: 'idle' });
    const s0 = view.getSnapshot();
    expect(view.getSnapshot()).toBe(s0);
    const onChange = vi.fn();
    const off = view.subscribe(onChange);
    const s1 = view.getSnapshot();
    expect(s1).toEqual({ data: [], status: 'connecting' });
    await tick(50);
    expect(view.getSnapshot()).toBe(s1);
    const body = server.take().open();
    await tick();
    const s2 = view.getSnapshot();
    expect(s2).toEqual({ data: [], status: 'live' });
    expect(view.getSnapshot()).toBe(s2);
    body.event('c', '1', 1);
    body.event('c', '2', 2);
    body.event('other', '3', 3);
    await tick();
    const s3 = view.getSnapshot();
    expect(s3).toEqual({ data: [1, 2], status: 'live', lastEventId: '2' });
    expect(view.getSnapshot()).toBe(s3);
    expect(onChange).toHaveBeenCalledTimes(4); // connecting, live, event 1, event 2
    expect(view.getServerSnapshot()).toBe(server0);
    off();
  });

  it('state is kept after the last subscriber leaves: a remount gets it back', async () => {
    const { server, client } = setup();
    const view = client.view<number, number[]>('c', { reducer: append });
    const off = view.subscribe(() => {});
    await tick(50);
    const req = server.take();
    req.open().event('c', '1', 1);
    await tick();
    off();
    await tick(50);
    expect(req.aborted).toBe(true);
    expect(view.getSnapshot()).toEqual({ data: [1], status: 'idle', lastEventId: '1' });
    const again = client.view<number, number[]>('c', { reducer: append });
    expect(again).toBe(view);
    const off2 = again.subscribe(() => {});
    await tick(50);
    const req2 = server.take();
    expect(req2.headers.get('last-event-id')).toBe('1');
    req2.open().event('c', '2', 2);
    await tick();
    expect(again.getSnapshot().data).toEqual([1, 2]);
    off2();
  });

  it('two subscribers share one demand; the view reflects denial with its reason', async () => {
    const { server, client } = setup();
    const onDenied = vi.fn();
    const view = client.view('secret', { onDenied });
    view.subscribe(() => {});
    view.subscribe(() => {});
    client.subscribe('open', () => {});
    await tick(50);
    server.take().reply(403, 'sse: not allowed: secret\n');
    await tick();
    expect(view.getSnapshot()).toEqual({ data: undefined, status: 'denied', error: 'sse: not allowed: secret' });
    expect(onDenied).toHaveBeenCalledTimes(1);
    expect(server.take().channels).toEqual(['open']);
  });

  it('view onGap reaches the latest callback given', async () => {
    const { server, client } = setup();
    const first = vi.fn();
    const latest = vi.fn();
    client.view('c', { onGap: first }).subscribe(() => {});
    client.view('c', { onGap: latest });
    await tick(50);
    server.take().open().event('sse-gap', 'c');
    await tick();
    expect(first).not.toHaveBeenCalled();
    expect(latest).toHaveBeenCalledWith('c');
  });
});

describe('persist: session', () => {
  it('a reload resumes from the last id, and persisted views from their state', async () => {
    const storage = fakeSessionStorage();
    vi.stubGlobal('sessionStorage', storage);
    const options = { persist: 'session' as const, storageKey: 'k' };

    // First page.
    const a = setup(options);
    const va = a.client.view<number, number[]>('c', { reducer: append, persist: 'session' });
    va.subscribe(() => {});
    await tick(50);
    const body = a.server.take().open();
    body.event('c', '1', 1);
    body.event('c', '2', 2);
    body.event('c', '3', 3); // one chunk sequence, one write
    await tick();
    expect(JSON.parse(storage.items.get('k')!)).toEqual({ i: '3', v: { 'c\n': { d: [1, 2, 3], i: '3' } } });
    const writes = storage.setItem.mock.calls.length;
    expect(writes).toBeLessThanOrEqual(3);

    // Reload: a new client in the same tab.
    const b = setup(options);
    const vb = b.client.view<number, number[]>('c', { reducer: append, persist: 'session' });
    expect(vb.getSnapshot()).toEqual({ data: [1, 2, 3], status: 'idle', lastEventId: '3' });
    vb.subscribe(() => {});
    await tick(50);
    const req = b.server.take();
    expect(req.headers.get('last-event-id')).toBe('3');
    const replay = req.open();
    replay.event('c', '3', 3);
    replay.event('c', '4', 4);
    await tick();
    expect(vb.getSnapshot().data).toEqual([1, 2, 3, 4]);
    expect(b.client.lastEventId).toBe('4');
  });

  it('without persist nothing is read or written', async () => {
    const storage = fakeSessionStorage();
    storage.items.set('nginx-sse:/events', JSON.stringify({ i: '9', v: {} }));
    vi.stubGlobal('sessionStorage', storage);
    const { server, client } = setup();
    client.subscribe('c', () => {});
    await tick(50);
    const req = server.take();
    expect(req.headers.has('last-event-id')).toBe(false);
    req.open().event('c', '1', 10);
    await tick();
    expect(storage.setItem).not.toHaveBeenCalled();
  });

  it('unusable storage is not an error', async () => {
    vi.stubGlobal('sessionStorage', {
      getItem: () => {
        throw new Error('SecurityError');
      },
      setItem: () => {
        throw new Error('QuotaExceededError');
      },
    });
    const { server, client } = setup({ persist: 'session' });
    const view = client.view('c', { persist: 'session' });
    view.subscribe(() => {});
    await tick(50);
    server.take().open().event('c', '5', 1);
    await tick();
    expect(view.getSnapshot().data).toBe(5);
  });
});
