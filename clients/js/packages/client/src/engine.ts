/**
 * The connection: one stream request at a time for the current demand, with
 * per-subscription error handling and backoff. It runs in the tab that holds
 * the connection (every tab, or the leader when tabs share).
 */

import { backoffDelay, DEFAULT_BASE_MS, DEFAULT_CAP_MS } from './backoff';
import { selectRequest } from './demand';
import { CHANNELS, createSession, SESSION, type Session } from './live';
import { covers } from './pattern';
import { NOT_ALLOWED, refusedIn, splitList } from './refusal';
import { createReplayFilter } from './replay';
import { runStream, type Outcome } from './transport';
import type { ClientOptions, ConnectionStatus } from './types';

/** What the tabs need to know about the connection (structured-cloneable). */
export interface EngineState {
  status: ConnectionStatus;
  /** Requested subscriptions, sorted. */
  request: string[];
  /** Subscriptions served by the open stream. */
  live: string[];
  /** Subscriptions kept out of the request, with the reason. */
  denied: [string, string][];
  /** The last error, while reconnecting. */
  error?: string | undefined;
}

export interface EngineHooks {
  /** The demanded subscriptions with valid names, in demand order. */
  demand(): string[];
  lastId(): string | undefined;
  /** `replay`: an event of a channel added in place, below the last id (replay.ts). */
  event(channel: string, data: string, id: string | undefined, replay?: boolean): void;
  state(s: EngineState): void;
}

/** What the client drives: a local engine, or the tab-sharing link. */
export interface Connection {
  /** The demand changed: recompute the request (reconnects if it changed). */
  update(): void;
  /** `sub` is no longer demanded by this tab: a denial by the server ends, unless another tab still asks for it. */
  release(sub: string): void;
  /** The browser is back online: a reconnection waiting for its delay happens now. */
  online(): void;
  /** The page was hidden (true) or shown (closeWhenHidden). */
  pause(hidden: boolean): void;
  close(): void;
}

export const REFUSED = 'sse-refused';

export function createEngine(o: ClientOptions, hooks: EngineHooks): Connection {
  let status: ConnectionStatus = 'idle';
  let request: string[] = [];
  let live: string[] = [];
  let overlap: string[] = [];
  let error: string | undefined;
  /**
   * Denied by the server (403, 400, sse-refused) until no longer demanded;
   * 403 denials also end when the server ends a stream cleanly.
   */
  const sticky = new Map<string, string>();
  let serverRetry: number | undefined;
  let attempt = 0;
  let timer: ReturnType<typeof setTimeout> | undefined;
  let ctrl: AbortController | undefined;
  /** The open stream's live changes (with `subscribeUrl`). */
  let session: Session | undefined;
  const replay = createReplayFilter();
  let paused = false;

  /**
   * A subscription left out because it overlaps a requested one is served
   * by it when that one covers it (`dashboards:7` under `dashboards:*`): it
   * is live with it. Otherwise part of it would be missing: denied.
   */
  const coverer = (s: string): string | undefined => request.find((r) => covers(r, s));
  const emit = (): void =>
    hooks.state({
      status,
      request,
      live: [...live, ...overlap.filter((s) => live.includes(coverer(s) ?? ''))],
      denied: [
        ...sticky,
        ...overlap.filter((s) => !coverer(s)).map((s): [string, string] => [s, 'overlap']),
      ],
      error,
    });

  const stop = (): void => {
    clearTimeout(timer);
    timer = undefined;
    ctrl?.abort();
    ctrl = undefined;
    session?.close();
    session = undefined;
  };

  /** Recomputes the request; reconnects when it changed (or `force`). */
  function update(force?: boolean): void {
    const demanded = hooks.demand();
    for (const s of sticky.keys()) if (!demanded.includes(s)) sticky.delete(s);
    const next = selectRequest(demanded, (s) => sticky.has(s));
    const changed = force || next.request.join() !== request.join();
    overlap = next.overlap;
    request = next.request;
    if (!request.length) {
      stop();
      replay.reset();
      if (status !== 'closed') status = 'idle';
      live = [];
      error = undefined;
    } else if (changed && !timer && !paused && status !== 'closed') {
      // In place when the stream offers it, else a new stream.
      if (force || !session?.ready) return connect();
      session.change();
    }
    emit();
  }

  function retryLater(): void {
    status = 'reconnecting';
    live = [];
    if (!paused) {
      const base = o.retry?.initialMs ?? serverRetry ?? DEFAULT_BASE_MS;
      timer = setTimeout(connect, backoffDelay(attempt++, base, o.retry?.maxMs ?? DEFAULT_CAP_MS));
    }
    emit();
  }

  function connect(): void {
    stop();
    // A switch of subscriptions keeps the status 'open' until the answer.
    if (status === 'idle') status = 'connecting';
    const subs = request;
    const c = (ctrl = new AbortController());
    const headers: Record<string, string> = { Accept: 'text/event-stream', ...o.headers };
    const id = replay.resume(hooks.lastId());
    if (id !== undefined) headers['Last-Event-ID'] = id;
    const url = o.url + (o.url.includes('?') ? '&' : '?') + encodeURIComponent(o.channelsParam ?? 'channels') + '=' + subs.map(encodeURIComponent).join(',');
    const fetchFn = o.fetch || globalThis.fetch;
    const s = (session = o.subscribeUrl
      ? createSession(o, subs, replay, {
          want: () => request,
          lastId: hooks.lastId,
          applied(now) {
            live = request.filter((x) => now.includes(x) && !sticky.has(x));
            emit();
          },
          denied(named, reason) {
            for (const x of named) sticky.set(x, reason);
            update();
          },
          fallback: connect,
        })
      : undefined);
    runStream(fetchFn, { url, headers, credentials: o.credentials ?? 'same-origin', signal: c.signal }, {
      open() {
        if (c.signal.aborted) return;
        status = 'open';
        live = subs.filter((s) => !sticky.has(s));
        error = undefined;
        emit();
      },
      byte: () => (attempt = 0),
      retry: (ms) => (serverRetry = ms),
      event(channel, data, eventId) {
        if (c.signal.aborted) return;
        // The session's own events are not channels.
        if (channel === SESSION) return s?.token(data);
        if (channel === CHANNELS) return s?.channels(data);
        if (channel !== REFUSED) {
          const v = replay.verdict(channel, eventId, hooks.lastId());
          // An old id goes on as such: each tab drops it with its own last id.
          return hooks.event(channel, data, eventId, v === 'replay');
        }
        // Not granted (sse_refused drop) or refused by Redis: the stream
        // goes on without them, and they are not asked for again.
        for (const x of splitList(data)) sticky.set(x, REFUSED + ': ' + data);
        request = request.filter((s) => !sticky.has(s));
        live = live.filter((s) => !sticky.has(s));
        emit();
      },
    }).then((outcome) => {
      if (c.signal.aborted) return;
      ctrl = undefined;
      s?.close();
      session = undefined;
      done(outcome, subs);
    });
    emit();
  }

  function done(outcome: Outcome, subs: string[]): void {
    if (!outcome) {
      // A clean end (reload, revocation): auth runs again on the next
      // request and grants may have changed, so 403 denials are asked again.
      for (const [s, r] of sticky) if (r.startsWith(NOT_ALLOWED)) sticky.delete(s);
      retryLater();
      return update();
    }
    if ('error' in outcome) {
      const e = outcome.error;
      error = String((e as Error)?.message ?? e);
      return retryLater();
    }
    const code = outcome.status;
    const reason = outcome.body || 'HTTP ' + code;
    const named = refusedIn(code, reason, subs);
    if (named.length) {
      // Those are denied until unsubscribed; the others reconnect at once.
      for (const s of named) sticky.set(s, reason);
      if (status === 'open') status = 'reconnecting';
      live = [];
      return update(true);
    }
    if (code === 401 || code === 403) o.onAuthError?.(code);
    error = reason;
    retryLater();
  }

  return {
    update: () => update(),
    release(sub) {
      if (!hooks.demand().includes(sub) && sticky.delete(sub)) emit();
    },
    online() {
      if (timer) connect();
    },
    pause(hidden) {
      paused = hidden;
      if (hidden && request.length) {
        stop();
        status = 'reconnecting';
        live = [];
        emit();
      } else if (!hidden && request.length && !ctrl) connect();
    },
    close() {
      stop();
      replay.reset();
      status = 'closed';
      live = [];
      emit();
    },
  };
}
