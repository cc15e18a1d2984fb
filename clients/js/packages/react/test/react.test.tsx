// @vitest-environment jsdom
// Unit tests of the React bindings against a fake `Client` (test/fake-client.ts):
// independent of the state of @nginx-sse/client, whose `createClient` is mocked.
import { StrictMode, useState, type ReactNode } from 'react';
import { act, cleanup, render, screen } from '@testing-library/react';
import { hydrateRoot } from 'react-dom/client';
import { renderToString } from 'react-dom/server';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import type { ClientOptions, SSEEvent, ViewOptions } from '@nginx-sse/client';
import { FakeClient } from './fake-client';

const created = vi.hoisted(() => [] as { options: unknown; client: unknown }[]);
vi.mock('@nginx-sse/client', async () => {
  const { FakeClient } = await import('./fake-client');
  return {
    createClient: (options: ClientOptions) => {
      const client = new FakeClient();
      created.push({ options, client });
      return client;
    },
    matches: () => false,
  };
});

import { SSEProvider, useSSE, useSSEClient, withSSE, type SSEInjectedProps } from '../src/index';

afterEach(() => {
  cleanup();
  vi.useRealTimers();
});
beforeEach(() => {
  created.length = 0;
});

// eslint-disable-next-line @typescript-eslint/no-explicit-any
function Show({ sub, options, testid = 'out' }: { sub: string | null; options?: ViewOptions<any, any>; testid?: string }) {
  const s = useSSE(sub, options);
  return <div data-testid={testid}>{JSON.stringify(s)}</div>;
}
const state = (testid = 'out') => JSON.parse(screen.getByTestId(testid).textContent!);

function withClient(client: FakeClient, children: ReactNode) {
  return <SSEProvider client={client}>{children}</SSEProvider>;
}

describe('useSSE', () => {
  it('returns the view state and re-renders when it changes', () => {
    const client = new FakeClient();
    client.status = 'open';
    let renders = 0;
    function Lines() {
      renders++;
      const s = useSSE<string, string[]>('logs:w1', { reducer: (lines = [], e) => [...lines.slice(-1), e.data] });
      return <div data-testid="out">{JSON.stringify(s)}</div>;
    }
    render(withClient(client, <Lines />));
    expect(state()).toEqual({ status: 'live' });
    const before = renders;
    act(() => client.emit('logs:w1', 'a'));
    expect(state()).toMatchObject({ data: ['a'], status: 'live', lastEventId: '1' });
    act(() => client.emit('logs:w1', 'b'));
    act(() => client.emit('logs:w1', 'c'));
    expect(state().data).toEqual(['b', 'c']);
    expect(renders).toBe(before + 3);
    act(() => client.setViewStatus('logs:w1', 'denied', 'overlap'));
    expect(state()).toMatchObject({ status: 'denied', error: 'overlap', data: ['b', 'c'] });
  });

  it('default reducer keeps the last event data; initial before any event', () => {
    const client = new FakeClient();
    render(withClient(client, <Show sub="price" options={{ initial: 0 }} />));
    expect(state()).toEqual({ data: 0, status: 'connecting' });
    act(() => client.emit('price', 42));
    expect(state().data).toBe(42);
  });

  it('a new options object on each render does not resubscribe; the first reducer is kept', () => {
    const client = new FakeClient();
    const first = vi.fn((n: number = 0, _e: SSEEvent<unknown>) => n + 1);
    const later = vi.fn((n: number = 0, _e: SSEEvent<unknown>) => n + 100);
    function Counter({ reducer }: { reducer: typeof first }) {
      const s = useSSE('c', { reducer, initial: 0 });
      return <div data-testid="out">{JSON.stringify(s)}</div>;
    }
    const { rerender } = render(withClient(client, <Counter reducer={first} />));
    for (let i = 0; i < 3; i++) rerender(withClient(client, <Counter reducer={later} />));
    act(() => client.emit('c', 'x'));
    expect(state().data).toBe(1);
    expect(first).toHaveBeenCalledTimes(1);
    expect(later).not.toHaveBeenCalled();
    expect(client.subscribeCalls).toEqual(['c']);
    const view = client.view('c');
    expect(client.viewCalls.every((c) => client.view(c.subscription, c.options) === view)).toBe(true);
  });

  it('hands the latest options to client.view after each commit (latest callbacks win), same view', () => {
    const client = new FakeClient();
    function Gap({ onGap }: { onGap: (c: string) => void }) {
      useSSE('g', { onGap } as ViewOptions<unknown, unknown>);
      return null;
    }
    const first = () => {};
    const second = () => {};
    const { rerender } = render(withClient(client, <Gap onGap={first} />));
    rerender(withClient(client, <Gap onGap={second} />));
    const last = client.viewCalls.at(-1)!;
    expect(last.subscription).toBe('g');
    expect((last.options as { onGap?: unknown }).onGap).toBe(second);
    expect(client.subscribeCalls).toEqual(['g']);
  });

  it('options.key selects another view of the same subscription', () => {
    const client = new FakeClient();
    render(
      withClient(
        client,
        <>
          <Show testid="last" sub="t" />
          <Show testid="count" sub="t" options={{ key: 'count', reducer: (n: number = 0) => n + 1 }} />
        </>,
      ),
    );
    act(() => client.emit('t', 'a'));
    act(() => client.emit('t', 'b'));
    expect(state('last').data).toBe('b');
    expect(state('count').data).toBe(2);
    expect(new Set(client.viewCalls.map((c) => c.options?.key))).toEqual(new Set([undefined, 'count']));
  });

  it('a component that unmounts and remounts gets its state back (same view)', () => {
    const client = new FakeClient();
    function Toggle({ on }: { on: boolean }) {
      return on ? <Show sub="logs" options={{ reducer: (a: unknown[] = [], e: SSEEvent<unknown>) => [...a, e.data] }} /> : null;
    }
    const { rerender } = render(withClient(client, <Toggle on />));
    act(() => client.emit('logs', 1));
    act(() => client.emit('logs', 2));
    rerender(withClient(client, <Toggle on={false} />));
    expect(client.demandOf('logs')).toBe(0);
    rerender(withClient(client, <Toggle on />));
    expect(state().data).toEqual([1, 2]);
    act(() => client.emit('logs', 3));
    expect(state().data).toEqual([1, 2, 3]);
    expect(new Set(client.viewCalls.map((c) => c.subscription))).toEqual(new Set(['logs']));
  });

  it('two components on the same channel share one view and one subscription', () => {
    const client = new FakeClient();
    render(withClient(client, <><Show testid="a" sub="room:1" /><Show testid="b" sub="room:1" /></>));
    act(() => client.emit('room:1', 'hi'));
    expect(state('a').data).toBe('hi');
    expect(state('b').data).toBe('hi');
    expect(client.subscribeCalls).toEqual(['room:1']);
    expect(client.activeSubscriptions).toEqual(['room:1']);
    const view = client.view('room:1') as unknown as { listeners: number };
    expect(view.listeners).toBe(2);
  });

  it('null subscription → idle with initial, and no demand', () => {
    const client = new FakeClient();
    render(withClient(client, <Show sub={null} options={{ initial: 'none' }} />));
    expect(state()).toEqual({ data: 'none', status: 'idle' });
    expect(client.viewCalls).toHaveLength(0);
    expect(client.activeSubscriptions).toEqual([]);
  });

  it('without a provider → idle with initial', () => {
    render(<Show sub="x" options={{ initial: [1] }} />);
    expect(state()).toEqual({ data: [1], status: 'idle' });
  });

  it('idle snapshot is stable across renders (no render loop with a fresh initial)', () => {
    let renders = 0;
    const seen = new Set<unknown>();
    function Idle() {
      renders++;
      const s = useSSE(null, { initial: [] as number[] });
      seen.add(s);
      return null;
    }
    const { rerender } = render(<Idle />);
    rerender(<Idle />);
    expect(renders).toBe(2);
    expect(seen.size).toBe(1);
  });

  it('switching subscription releases the old demand; unmount releases all demand', () => {
    const client = new FakeClient();
    const { rerender, unmount } = render(withClient(client, <Show sub="a" />));
    expect(client.activeSubscriptions).toEqual(['a']);
    rerender(withClient(client, <Show sub="b" />));
    expect(client.activeSubscriptions).toEqual(['b']);
    act(() => client.emit('b', 'B'));
    expect(state().data).toBe('B');
    rerender(withClient(client, <Show sub={null} />));
    expect(client.activeSubscriptions).toEqual([]);
    expect(state().status).toBe('idle');
    rerender(withClient(client, <Show sub="b" />));
    expect(state().data).toBe('B');
    unmount();
    expect(client.demandOf('b')).toBe(0);
    expect(client.activeSubscriptions).toEqual([]);
    expect(client.closed).toBe(0); // a client given to the provider is the caller's
  });
});

describe('SSEProvider', () => {
  it('url: StrictMode double mount creates exactly one client, closed after unmount', async () => {
    vi.useFakeTimers();
    const { unmount } = render(
      <StrictMode>
        <SSEProvider url="/events" options={{ debounceMs: 0 }}>
          <Show sub="logs:w1:nightly" />
        </SSEProvider>
      </StrictMode>,
    );
    await act(async () => {
      await vi.runAllTimersAsync();
    });
    expect(created).toHaveLength(1);
    expect(created[0]!.options).toEqual({ url: '/events', debounceMs: 0 });
    const client = created[0]!.client as FakeClient;
    expect(client.closed).toBe(0);
    expect(client.activeSubscriptions).toEqual(['logs:w1:nightly']);
    act(() => client.emit('logs:w1:nightly', 'line'));
    expect(state()).toMatchObject({ data: 'line', status: 'connecting' });
    unmount();
    expect(client.demandOf('logs:w1:nightly')).toBe(0);
    expect(client.closed).toBe(0); // deferred
    await vi.runAllTimersAsync();
    expect(client.closed).toBe(1);
    expect(created).toHaveLength(1);
  });

  it('url: the client is created after mount (first render sees no client)', () => {
    const seen: (unknown | null)[] = [];
    function Peek() {
      seen.push(useSSEClient());
      return null;
    }
    render(<SSEProvider url="/e"><Peek /></SSEProvider>);
    expect(seen[0]).toBeNull();
    expect(seen.at(-1)).toBe(created[0]!.client);
    expect(created).toHaveLength(1);
  });

  it('re-rendering the provider does not create another client', () => {
    function App() {
      const [n, setN] = useState(0);
      return (
        <SSEProvider url="/e" options={{ headers: { n: String(n) } }}>
          <button onClick={() => setN(n + 1)}>more</button>
        </SSEProvider>
      );
    }
    render(<App />);
    act(() => screen.getByText('more').click());
    act(() => screen.getByText('more').click());
    expect(created).toHaveLength(1);
  });

  it('useSSEClient gives the provided client, null without provider', () => {
    const client = new FakeClient();
    let got: unknown = 'unset';
    function Peek() {
      got = useSSEClient();
      return null;
    }
    render(<Peek />);
    expect(got).toBeNull();
    cleanup();
    render(withClient(client, <Peek />));
    expect(got).toBe(client);
  });
});

describe('hydration', () => {
  it('hydrates server HTML without a mismatch, then goes live', async () => {
    vi.useFakeTimers();
    const errors = vi.spyOn(console, 'error').mockImplementation(() => {});
    const app = (
      <SSEProvider url="/events">
        <Show sub="h" options={{ initial: 'server' }} />
      </SSEProvider>
    );
    const container = document.createElement('div');
    container.innerHTML = renderToString(app);
    expect(created).toHaveLength(0);
    document.body.appendChild(container);
    const root = await act(async () => hydrateRoot(container, app));
    expect(errors).not.toHaveBeenCalled();
    errors.mockRestore();
    expect(created).toHaveLength(1);
    const client = created[0]!.client as FakeClient;
    expect(client.activeSubscriptions).toEqual(['h']);
    act(() => client.emit('h', 'live'));
    expect(state()).toMatchObject({ data: 'live', status: 'connecting' });
    act(() => root.unmount());
    await vi.runAllTimersAsync();
    expect(client.closed).toBe(1);
    container.remove();
  });
});

describe('withSSE', () => {
  interface Props extends SSEInjectedProps<string[]> {
    title: string;
    job: string;
  }
  function Log({ title, sseData, sseStatus, sseError }: Props) {
    return <div data-testid="out">{JSON.stringify({ title, sseData, sseStatus, sseError })}</div>;
  }

  it('injects sseData/sseStatus/sseError, passes other props, sets displayName', () => {
    const client = new FakeClient();
    const LiveLog = withSSE(Log, ({ job }) => ({
      subscription: `logs:${job}`,
      reducer: (lines: string[] = [], e: SSEEvent<unknown>) => [...lines, String(e.data)],
    }));
    expect(LiveLog.displayName).toBe('withSSE(Log)');
    const { rerender } = render(withClient(client, <LiveLog title="Nightly" job="w1" />));
    expect(state()).toEqual({ title: 'Nightly', sseStatus: 'connecting' });
    act(() => client.emit('logs:w1', 'x'));
    expect(state()).toEqual({ title: 'Nightly', sseData: ['x'], sseStatus: 'connecting' });
    act(() => client.setViewStatus('logs:w1', 'denied', 'forbidden'));
    expect(state()).toEqual({ title: 'Nightly', sseData: ['x'], sseStatus: 'denied', sseError: 'forbidden' });
    rerender(withClient(client, <LiveLog title="Other" job="w2" />));
    expect(state()).toEqual({ title: 'Other', sseStatus: 'connecting' });
    expect(client.activeSubscriptions).toEqual(['logs:w2']);
  });

  it('accepts a static options object; idle without provider', () => {
    const Static = withSSE(Log, { subscription: 'logs:w9', initial: ['none'] });
    render(<Static title="T" job="ignored" />);
    expect(state()).toEqual({ title: 'T', sseData: ['none'], sseStatus: 'idle' });
  });

  it('types: the wrapped component takes its props minus the injected three', () => {
    const Wrapped = withSSE(Log, { subscription: 'x' });
    const ok = <Wrapped title="a" job="b" />;
    // @ts-expect-error sseData is injected, not a prop of the wrapper
    const bad = <Wrapped title="a" job="b" sseData={[]} />;
    // @ts-expect-error title is still required
    const missing = <Wrapped job="b" />;
    // @ts-expect-error the reducer must produce the wrapped component's sseData type
    withSSE(Log, { subscription: 'x', reducer: () => 1 });
    // A component typing sseStatus as string accepts it; one that cannot take undefined data or a
    // non-string status is refused.
    withSSE((p: { sseStatus: string; sseData?: number }) => <i>{p.sseStatus}</i>, { subscription: 'x' });
    // @ts-expect-error sseData may be undefined (before the first event)
    withSSE((p: { sseData: number }) => <i>{p.sseData}</i>, { subscription: 'x' });
    // @ts-expect-error sseStatus is a ViewStatus
    withSSE((p: { sseStatus: number }) => <i>{p.sseStatus}</i>, { subscription: 'x' });
    expect([ok, bad, missing]).toHaveLength(3);
  });
});
