/**
 * A scripted nginx-sse for unit tests: a `fetch` whose requests the test
 * answers one by one, with a 200 text/event-stream body written chunk by
 * chunk (split at arbitrary bytes: inside fields, lines, events and UTF-8
 * sequences), another status with a text/plain body, or a network error.
 * Aborting the request's signal errors its body, as fetch does.
 */

import { expect } from 'vitest';

export interface FakeBody {
  /** Writes `text` in chunks of `size` bytes. */
  write(text: string, size?: number): void;
  /** Writes one event as the server frames it (event, id, data lines), split into chunks. */
  event(channel: string, data: string, id?: number | string): void;
  retry(ms: number): void;
  /** Ends the body cleanly (server reload, revocation). */
  end(): void;
  /** Breaks the body (connection reset). */
  fail(): void;
}

export interface FakeRequest {
  url: URL;
  method: string;
  /** A POST's form body (live channel changes). */
  form: URLSearchParams;
  /** The decoded subscriptions of the channels argument. */
  channels: string[];
  headers: Headers;
  init: RequestInit;
  readonly aborted: boolean;
  /** Answers 200 text/event-stream. */
  open(): FakeBody;
  /** Answers another status. */
  reply(status: number, body?: string, type?: string): void;
  /** Fails as a network error. */
  fail(): void;
}

/** How the server frames an event (crates/sse-core/src/frame.rs). */
export function frame(channel: string, data: string, id?: number | string): string {
  const lines = data.split(/\r\n|\r|\n/).map((l) => `data: ${l}\n`);
  return `event: ${channel}\n` + (id === undefined ? '' : `id: ${id}\n`) + lines.join('') + '\n';
}

export function fakeServer(param = 'channels') {
  const requests: FakeRequest[] = [];
  let taken = 0;
  const encoder = new TextEncoder();

  const fetch = (input: RequestInfo | URL, init: RequestInit = {}): Promise<Response> =>
    new Promise<Response>((resolve, reject) => {
      const url = new URL(String(input), 'http://localhost');
      const signal = init.signal;
      const abortError = (): DOMException => new DOMException('The operation was aborted.', 'AbortError');
      let answered = false;
      signal?.addEventListener('abort', () => {
        if (!answered) reject(abortError());
      });
      const req: FakeRequest = {
        url,
        method: init.method ?? 'GET',
        form: new URLSearchParams(typeof init.body === 'string' ? init.body : ''),
        channels: (url.searchParams.get(param) ?? '').split(',').filter(Boolean),
        headers: new Headers(init.headers),
        init,
        get aborted() {
          return !!signal?.aborted;
        },
        open() {
          answered = true;
          let controller!: ReadableStreamDefaultController<Uint8Array>;
          let closed = false;
          const stream = new ReadableStream<Uint8Array>({ start: (c) => void (controller = c) });
          signal?.addEventListener('abort', () => {
            if (!closed) controller.error(abortError());
            closed = true;
          });
          resolve(new Response(stream, { status: 200, headers: { 'content-type': 'text/event-stream' } }));
          const body: FakeBody = {
            write(text, size = 7) {
              if (closed) return;
              const bytes = encoder.encode(text);
              for (let i = 0; i < bytes.length; i += size) controller.enqueue(bytes.slice(i, i + size));
            },
            event: (channel, data, id) => body.write(frame(channel, data, id)),
            retry: (ms) => body.write(`retry: ${ms}\n\n`),
            end() {
              if (!closed) controller.close();
              closed = true;
            },
            fail() {
              if (!closed) controller.error(new TypeError('network error'));
              closed = true;
            },
          };
          return body;
        },
        reply(status, text = '', type = 'text/plain') {
          answered = true;
          resolve(new Response(text, { status, headers: { 'content-type': type } }));
        },
        fail() {
          answered = true;
          reject(new TypeError('Failed to fetch'));
        },
      };
      requests.push(req);
    });

  return {
    fetch: fetch as typeof globalThis.fetch,
    requests,
    /** The next request not yet taken (fails the test if there is none). */
    take(): FakeRequest {
      expect(requests.length, 'a new request').toBeGreaterThan(taken);
      return requests[taken++]!;
    },
    /** Requests made and not taken yet. */
    get pending(): number {
      return requests.length - taken;
    },
  };
}

/** Lets promise chains (fetch, body reads) run: a few turns of the real event loop. */
export async function settle(turns = 5): Promise<void> {
  for (let i = 0; i < turns; i++) await new Promise<void>((r) => setImmediate(r));
}
