// @vitest-environment jsdom
// Integration: the bindings over the REAL `createClient` of @nginx-sse/client,
// with an injected fake `fetch` answering a streamed text/event-stream body.
// Skipped (with a message) while @nginx-sse/client does not resolve or does not
// export `createClient` yet (it is written alongside this package).
import { StrictMode } from 'react';
import { act, cleanup, render, screen, waitFor } from '@testing-library/react';
import { afterEach, expect, it } from 'vitest';
import type { SSEEvent } from '@nginx-sse/client';

// A computed specifier: resolved when run (a failure is caught here), not when this file is transformed.
const corePackage = '@nginx-sse/client';
const core: Record<string, unknown> | Error = await import(/* @vite-ignore */ corePackage).catch((e: unknown) =>
  e instanceof Error ? e : new Error(String(e)),
);
const missing =
  core instanceof Error
    ? `@nginx-sse/client does not load (${core.message.split('\n')[0]})`
    : typeof core.createClient !== 'function'
      ? '@nginx-sse/client does not export createClient yet'
      : null;
if (missing) console.warn(`[@nginx-sse/react integration test] SKIPPED: ${missing}`);

afterEach(cleanup);

interface Call {
  url: string;
  init: RequestInit | undefined;
  push(chunk: string): void;
}

/** A `fetch` whose every call answers 200 text/event-stream with a body the test writes to. */
function fakeFetch() {
  const calls: Call[] = [];
  const encoder = new TextEncoder();
  const fetch = async (input: RequestInfo | URL, init?: RequestInit): Promise<Response> => {
    let controller!: ReadableStreamDefaultController<Uint8Array>;
    const body = new ReadableStream<Uint8Array>({ start: (c) => void (controller = c) });
    const signal = init?.signal;
    signal?.addEventListener('abort', () => {
      try {
        controller.error(signal.reason ?? new DOMException('aborted', 'AbortError'));
      } catch {
        /* already closed */
      }
    });
    calls.push({
      url: String(input instanceof Request ? input.url : input),
      init,
      push: (chunk) => controller.enqueue(encoder.encode(chunk)),
    });
    return new Response(body, { status: 200, headers: { 'content-type': 'text/event-stream' } });
  };
  return { fetch: fetch as typeof globalThis.fetch, calls };
}

it.skipIf(missing !== null)(
  'real client: StrictMode provider opens one connection, two components share the channel, latest onGap called, unmount closes it',
  async () => {
    const { SSEProvider, useSSE, withSSE } = await import('../src/index');
    const { fetch, calls } = fakeFetch();
    const channel = 'logs:w1:nightly';

    const gaps: string[] = [];
    function Lines({ tag }: { tag: string }) {
      const s = useSSE<string, string[]>(channel, {
        reducer: (lines = [], e: SSEEvent<string>) => [...lines.slice(-999), e.data],
        onGap: (c: string) => void gaps.push(`${tag}:${c}`), // the latest rendered callback is called
      });
      return <div data-testid="lines" data-status={s.status}>{(s.data ?? []).join('|')}</div>;
    }
    const Last = withSSE(
      ({ sseData, sseStatus }: { sseData?: string; sseStatus: string }) => (
        <div data-testid="last" data-status={sseStatus}>{sseData ?? '-'}</div>
      ),
      { subscription: channel },
    );

    const app = (tag: string) => (
      <StrictMode>
        <SSEProvider url="/events" options={{ fetch, debounceMs: 0 }}>
          <Lines tag={tag} />
          <Last />
        </SSEProvider>
      </StrictMode>
    );
    const { rerender, unmount } = render(app('first'));

    await waitFor(() => expect(calls.length).toBeGreaterThan(0));
    const call = calls[0]!;
    const url = new URL(call.url, 'http://localhost');
    expect(url.pathname).toBe('/events');
    expect(url.searchParams.get('channels')).toBe(channel);

    await act(async () => {
      call.push(`event: ${channel}\ndata: "one"\nid: 1\n\n`);
      call.push(`event: ${channel}\ndata: "two"\nid: 2\n\n`);
    });
    await waitFor(() => expect(screen.getByTestId('lines').textContent).toBe('one|two'));
    await waitFor(() => expect(screen.getByTestId('last').textContent).toBe('two'));
    expect(screen.getByTestId('lines').dataset.status).toBe('live');
    expect(screen.getByTestId('last').dataset.status).toBe('live');

    rerender(app('second'));
    await act(async () => call.push(`event: sse-gap\ndata: ${channel}\n\n`));
    await waitFor(() => expect(gaps).toEqual([`second:${channel}`]));

    // Give a second connection every chance to appear: there must be none.
    await new Promise((r) => setTimeout(r, 100));
    expect(calls).toHaveLength(1);

    unmount();
    await waitFor(() => expect(call.init?.signal?.aborted).toBe(true));
    await new Promise((r) => setTimeout(r, 100));
    expect(calls).toHaveLength(1);
  },
);
