/**
 * Routing: each event goes to the listeners of its exact channel and to the
 * pattern listeners whose pattern matches it; `sse-gap` goes to the onGap of
 * the subscriptions it names.
 */

import { isPattern, matches } from './pattern';
import type { SSEEvent, SubscribeOptions } from './types';

export const GAP = 'sse-gap';

export interface Entry {
  listener: (e: SSEEvent<any>) => void;
  options: SubscribeOptions<any>;
  /** The denial reason this listener was last told (onDenied once per denial). */
  told?: string | undefined;
}

export const defaultParse = (raw: string): unknown => {
  try {
    return JSON.parse(raw);
  } catch {
    return raw;
  }
};

/** Calls `f`; an exception is rethrown asynchronously so that it reaches the console but stops no other listener. */
export const safely = (f: () => void): void => {
  try {
    f();
  } catch (e) {
    setTimeout(() => {
      throw e;
    });
  }
};

export type Router = Map<string, Set<Entry>>;

/** Whether a listener of `sub` gets the events of `channel`. */
export const receives = (sub: string, channel: string): boolean =>
  sub === channel || (isPattern(sub) && matches(sub, channel));

/** Delivers one event (sse-gap included) to its listeners. */
export function route(router: Router, channel: string, raw: string, id: string | undefined): void {
  const gap = channel === GAP;
  const parsed = new Map<unknown, unknown>();
  for (const [sub, entries] of router) {
    for (const entry of entries) {
      if (gap) {
        for (const ch of raw.split(',')) {
          const c = ch.trim();
          if (receives(sub, c)) safely(() => entry.options.onGap?.(c));
        }
      } else if (receives(sub, channel)) {
        safely(() => {
          const parse = entry.options.parse ?? defaultParse;
          if (!parsed.has(parse)) parsed.set(parse, parse(raw));
          const e: SSEEvent = { channel, data: parsed.get(parse), raw };
          if (id !== undefined) e.id = id;
          entry.listener(e);
        });
      }
    }
  }
}
