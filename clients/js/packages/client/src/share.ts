/**
 * shareAcrossTabs: one connection per browser. The tab holding the Web Lock
 * `name` (for its life) runs the engine for the union of every tab's demand;
 * the others send it their demand over the BroadcastChannel `name` and get
 * its events and connection state back. Every tab de-duplicates events by
 * id with its own last id. When the leader goes, the next tab to get the
 * lock asks the others for their demand and last id (message 'h') and
 * connects from the highest id any tab saw: the previous leader's messages
 * were all posted before it went, so every tab receives them and nothing is
 * lost or duplicated.
 *
 * Returns undefined (no sharing) where Web Locks or BroadcastChannel is missing.
 */

import { laterId } from './dedupe';
import { createEngine, type Connection, type EngineHooks, type EngineState } from './engine';
import type { ClientOptions } from './types';

type Msg =
  /** A follower's demand and last id. */
  | { t: 'd'; f: string; s: string[]; i: string | undefined }
  /** A follower leaves. */
  | { t: 'b'; f: string }
  /** A new leader: followers, send your demand. */
  | { t: 'h' }
  /** An event, as the leader received it. */
  | { t: 'e'; c: string; d: string; i: string | undefined; r: boolean | undefined }
  /** The leader's connection state. */
  | { t: 's'; s: EngineState };

export function createShared(o: ClientOptions, name: string, hooks: EngineHooks): Connection | undefined {
  const locks = typeof navigator !== 'undefined' ? navigator.locks : undefined;
  if (!locks || typeof BroadcastChannel === 'undefined') return undefined;
  const tab = Math.random().toString(36).slice(2);
  const peers = new Map<string, { s: string[]; i: string | undefined }>();
  const bc = new BroadcastChannel(name);
  const ac = new AbortController();
  let engine: Connection | undefined;
  let release: (() => void) | undefined;
  let closing = false;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const post = (m: Msg): void => bc.postMessage(m);
  const announce = (): void => post({ t: 'd', f: tab, s: hooks.demand(), i: hooks.lastId() });
  const later = (): void => {
    clearTimeout(timer);
    timer = setTimeout(() => engine?.update(), o.debounceMs ?? 50);
  };

  bc.onmessage = ({ data: m }: MessageEvent<Msg>) => {
    if (m.t === 'e') hooks.event(m.c, m.d, m.i, m.r);
    else if (m.t === 's') hooks.state(m.s);
    else if (m.t === 'h') announce();
    else if (engine) {
      if (m.t === 'd') peers.set(m.f, m);
      else peers.delete(m.f);
      later();
    }
  };

  locks
    .request(name, { signal: ac.signal }, () =>
      new Promise<void>((resolve) => {
        release = resolve;
        engine = createEngine(o, {
          demand: () => [...new Set([...hooks.demand(), ...[...peers.values()].flatMap((p) => p.s)])],
          lastId: () => [...peers.values()].reduce((id, p) => laterId(id, p.i), hooks.lastId()),
          event(c, d, i, r) {
            post({ t: 'e', c, d, i, r });
            hooks.event(c, d, i, r);
          },
          state(s) {
            if (!closing) post({ t: 's', s });
            hooks.state(s);
          },
        });
        post({ t: 'h' });
        later();
      }),
    )
    .catch(() => {
      // Aborted: closed before getting the lock.
    });

  return {
    update: () => (engine ? engine.update() : announce()),
    release: (sub) => engine?.release(sub),
    online: () => engine?.online(),
    pause() {
      // The leader serves other tabs: it does not close when hidden.
    },
    close() {
      closing = true;
      clearTimeout(timer);
      ac.abort();
      engine?.close();
      release?.();
      post({ t: 'b', f: tab });
      bc.close();
    },
  };
}
