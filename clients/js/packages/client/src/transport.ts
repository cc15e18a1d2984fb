/**
 * One stream request: fetch with a streaming body, parsed by
 * eventsource-parser.
 */

import { createParser } from 'eventsource-parser';

export interface StreamRequest {
  url: string;
  headers: Record<string, string>;
  credentials: RequestCredentials;
  signal: AbortSignal;
}

export interface StreamHandlers {
  /** The server answered 200 text/event-stream. */
  open(): void;
  /** The first bytes of the body arrived. */
  byte(): void;
  event(channel: string, data: string, id: string | undefined): void;
  /** The `retry:` field, in ms. */
  retry(ms: number): void;
}

/**
 * How a stream request ended: undefined for a body that ended cleanly, the
 * status and text/plain body of any other answer than 200, or a network error.
 */
export type Outcome = undefined | { status: number; body: string } | { error: unknown };

/** The text of an answer: only a text/plain body is a reason (nginx's own error pages are HTML). */
export async function reasonOf(res: Response): Promise<string> {
  const type = res.headers.get('content-type') || '';
  return !type || type.startsWith('text/plain') ? (await res.text().catch(() => '')).trim() : '';
}

export async function runStream(
  fetchFn: typeof fetch,
  req: StreamRequest,
  h: StreamHandlers,
): Promise<Outcome> {
  try {
    const res = await fetchFn(req.url, {
      headers: req.headers,
      credentials: req.credentials,
      signal: req.signal,
      cache: 'no-store',
    });
    const type = res.headers.get('content-type') || '';
    if (res.status !== 200 || (type && !type.includes('text/event-stream'))) {
      return { status: res.status, body: await reasonOf(res) };
    }
    h.open();
    if (!res.body) return undefined;
    const parser = createParser({
      onEvent: (m) => h.event(m.event ?? 'message', m.data, m.id),
      onRetry: h.retry,
    });
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let first = true;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return undefined;
      if (first) {
        first = false;
        h.byte();
      }
      parser.feed(decoder.decode(value, { stream: true }));
    }
  } catch (error) {
    return { error };
  }
}
