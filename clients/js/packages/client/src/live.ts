/**
 * Live channel changes, one session per stream (`sse_session on` on the
 * stream's location, an `sse_subscribe` location at `subscribeUrl`; see the
 * server's README, "Changing channels without reconnecting"). The stream's
 * `sse-session` event carries a token; from then on a demand change is
 * POSTed to `subscribeUrl` as `session`, `add`, `remove`, `last_event_id`
 * instead of reconnecting. One change is in flight at a time: changes made
 * meanwhile go, together, into the next one. 200: the stream serves the
 * channels of the answer (its `sse-channels` event says the same, whichever
 * comes first). 403 or 400 naming subscriptions: those are denied and the
 * rest is sent again. Anything else (404: the stream is gone; 5xx, a network
 * error, no answer in time, a 400 or 403 naming none) reconnects with the
 * last event id, as without sessions.
 */

import { refusedIn, splitList } from './refusal';
import type { ReplayFilter, Window } from './replay';
import { reasonOf } from './transport';
import type { ClientOptions } from './types';

export const SESSION = 'sse-session';
export const CHANNELS = 'sse-channels';
/** A change not answered within this time reconnects. */
export const CHANGE_TIMEOUT_MS = 10000;

export interface SessionHooks {
  /** The subscriptions the stream should serve now. */
  want(): string[];
  lastId(): string | undefined;
  /** A change took effect: the stream serves `channels`. */
  applied(channels: string[]): void;
  /** The server refused these subscriptions (403, or a 400 naming them). */
  denied(subs: string[], reason: string): void;
  /** The change cannot be made in place: reconnect. */
  fallback(reason: string): void;
}

export interface Session {
  /** Whether changes can be made in place (the stream sent its token). */
  readonly ready: boolean;
  /** The stream's `sse-session` event. */
  token(data: string): void;
  /** The stream's `sse-channels` event. */
  channels(data: string): void;
  /** The demand changed: sends the difference now, or after the change in flight. */
  change(): void;
  /** The stream ended: the token is dead, a change in flight is abandoned. */
  close(): void;
}

const minus = (a: readonly string[], b: readonly string[]): string[] => a.filter((s) => !b.includes(s));
const same = (a: readonly string[], b: readonly string[]): boolean => a.length === b.length && !minus(a, b).length;
const list = (subs: string[]): string => subs.map(encodeURIComponent).join(',');

/** `serving`: what the stream was opened with. */
export function createSession(o: ClientOptions, serving: string[], replay: ReplayFilter, h: SessionHooks): Session {
  let token: string | undefined;
  let closed = false;
  /** The change in flight, and the channels it should leave. */
  let ctrl: AbortController | undefined;
  let expected: string[] | undefined;
  /** The replay window of the change in flight (kept for its retry after a denial). */
  let win: Window | undefined;
  /** The last change sent, while its 200 did not give what it asked for. */
  let unmet = '';

  const drop = (): void => {
    if (win) replay.close(win);
    win = undefined;
  };

  function change(): void {
    if (closed || ctrl || token === undefined) return;
    const add = minus(h.want(), serving);
    const remove = minus(serving, h.want());
    if (!add.length && !remove.length) return drop();
    const key = add + '|' + remove;
    // The server said 200 and did not do it: do not ask again and again.
    if (key === unmet) return h.fallback('sse: the change did not take effect');
    // A retry after a denial keeps the first attempt's id: nothing was applied.
    const floor = win ? win.floor : h.lastId();
    if (!add.length) drop();
    else if (win) win.subs = add;
    else if (floor !== undefined) win = replay.open(add, floor);
    const result = [...minus(serving, remove), ...add];
    expected = result;
    const c = (ctrl = new AbortController());
    const timer = setTimeout(() => c.abort(new Error('sse: no answer to the change')), CHANGE_TIMEOUT_MS);
    const body = [
      'session=' + encodeURIComponent(token),
      add.length && 'add=' + list(add),
      remove.length && 'remove=' + list(remove),
      floor !== undefined && 'last_event_id=' + encodeURIComponent(floor),
    ]
      .filter(Boolean)
      .join('&');
    const headers = { ...o.headers, 'Content-Type': 'application/x-www-form-urlencoded' };
    (o.fetch || globalThis.fetch)(o.subscribeUrl!, {
      method: 'POST',
      body,
      headers,
      credentials: o.credentials ?? 'same-origin',
      signal: c.signal,
      cache: 'no-store',
    })
      .then(async (res) => [res.status, await reasonOf(res)] as const)
      .catch((e: unknown) => [0, String((e as Error)?.message ?? e)] as const)
      .then(([status, text]) => {
        clearTimeout(timer);
        if (closed || c !== ctrl) return;
        ctrl = expected = undefined;
        if (status === 200) {
          serving = splitList(text);
          win = undefined; // the window lives on until the replay is over
          unmet = same(serving, result) ? '' : key;
          h.applied(serving);
          return change();
        }
        const reason = text || 'HTTP ' + status;
        const refused = refusedIn(status, reason, result);
        if (refused.length) {
          h.denied(refused, reason);
          return change();
        }
        drop();
        h.fallback(reason);
      });
  }

  return {
    get ready() {
      return !closed && token !== undefined;
    },
    token(data) {
      token = data;
    },
    channels(data) {
      const now = splitList(data);
      replay.effective(now, h.lastId());
      if (expected && same(now, expected)) {
        serving = now;
        h.applied(now);
      }
    },
    change,
    close() {
      closed = true;
      ctrl?.abort();
    },
  };
}
