/**
 * createClient: demand, routing, de-duplication, views and statuses around
 * one connection (a local engine, or the tab-sharing link).
 */

import { isNewer } from './dedupe';
import { createDemand } from './demand';
import { createEngine, type Connection, type EngineHooks, type EngineState } from './engine';
import { invalidReason } from './pattern';
import { route, safely, type Entry, type Router } from './router';
import { createShared } from './share';
import { createStorage } from './storage';
import { createView, type ViewEntry } from './store';
import type { Client, ClientOptions, ConnectionStatus, ViewStatus } from './types';

const initialState = (status: ConnectionStatus): EngineState => ({ status, request: [], live: [], denied: [] });

export function createClient(options: ClientOptions): Client {
  const o = { ...options };
  const key = o.storageKey ?? 'nginx-sse:' + o.url;
  const router: Router = new Map();
  const statusListeners = new Set<(s: ConnectionStatus) => void>();
  const watchers = new Set<() => void>();
  const views = new Map<string, ViewEntry>();
  const storage = createStorage(key);
  let state = initialState('idle');
  let lastId: string | undefined;
  let conn: Connection | undefined;
  let unlisten: (() => void) | undefined;
  let soon = false;
  const demand = createDemand(o.debounceMs ?? 50, () => conn?.update());

  /** Tells onDenied listeners of new denials, then the views. */
  function changed(): void {
    soon = false;
    for (const [sub, entries] of router) {
      const { status, reason } = subscriptionStatus(sub);
      const denial = status === 'denied' ? reason : undefined;
      for (const e of entries) {
        if (e.told !== denial && (e.told = denial) !== undefined) {
          safely(() => e.options.onDenied?.(sub, denial!));
        }
      }
    }
    watchers.forEach((w) => safely(w));
  }

  const changedSoon = (): void => {
    if (!soon) {
      soon = true;
      void Promise.resolve().then(changed);
    }
  };

  function setState(s: EngineState): void {
    const prev = state.status;
    state = s;
    if (s.status !== prev) statusListeners.forEach((l) => safely(() => l(s.status)));
    changed();
  }

  function onEvent(channel: string, data: string, id: string | undefined, replay?: boolean): void {
    // A replay of a channel added in place is below the last id, which stays.
    if (id !== undefined && !replay) {
      if (!isNewer(id, lastId)) return;
      lastId = id;
      if (o.persist) {
        storage.get().i = id;
        storage.save();
      }
    }
    route(router, channel, data, id);
  }

  /** Opens the connection (lazily: the first browser global is touched here). */
  function start(): void {
    if (conn) return;
    if (o.persist) lastId ??= storage.get().i;
    const hooks: EngineHooks = { demand: demand.valid, lastId: () => lastId, event: onEvent, state: setState };
    conn = (o.shareAcrossTabs && createShared(o, key, hooks)) || createEngine(o, hooks);
    demand.touch();
    if (!unlisten && typeof window !== 'undefined') {
      const online = (): void => conn?.online();
      const visibility = (): void => conn?.pause(document.visibilityState === 'hidden');
      const hide = (): void => {
        storage.flush();
        // A tab that goes away hands the shared connection over at once.
        if (o.shareAcrossTabs) stop();
      };
      const show = (e: Event): void => {
        if ((e as PageTransitionEvent).persisted && router.size) start();
      };
      const listen = (on: boolean): void => {
        const f = on ? 'addEventListener' : 'removeEventListener';
        window[f]('online', online);
        window[f]('pagehide', hide);
        window[f]('pageshow', show);
        if (o.closeWhenHidden) document[f]('visibilitychange', visibility);
      };
      listen(true);
      unlisten = () => listen(false);
    }
    // A page that starts hidden (background tab, prerender) waits until shown.
    if (o.closeWhenHidden && typeof document !== 'undefined') conn.pause(document.visibilityState === 'hidden');
  }

  function stop(): void {
    demand.cancel();
    conn?.close();
    conn = undefined;
  }

  function subscriptionStatus(sub: string): { status: ViewStatus; reason?: string } {
    if (state.status === 'closed') return { status: 'closed' };
    if (!demand.has(sub)) return { status: 'idle' };
    const denial = invalidReason(sub) ?? state.denied.find(([s]) => s === sub)?.[1];
    if (denial !== undefined) return { status: 'denied', reason: denial };
    if (state.status === 'open' && state.live.includes(sub)) return { status: 'live' };
    if (state.status === 'reconnecting') return state.error ? { status: 'reconnecting', reason: state.error } : { status: 'reconnecting' };
    return { status: 'connecting' };
  }

  const client: Client = {
    subscribe(sub, listener, opts = {}) {
      if (state.status === 'closed') state = initialState('idle');
      start();
      const entry: Entry = { listener, options: opts };
      const set = router.get(sub) ?? new Set();
      router.set(sub, set.add(entry));
      if (demand.add(sub)) demand.touch();
      changedSoon();
      let done = false;
      return () => {
        if (done) return;
        done = true;
        const entries = router.get(sub);
        if (entries?.delete(entry) && !entries.size) router.delete(sub);
        if (demand.remove(sub)) {
          conn?.release(sub);
          demand.touch();
        }
        changedSoon();
      };
    },
    get status() {
      return state.status;
    },
    get lastEventId() {
      return lastId;
    },
    get activeSubscriptions() {
      return state.request;
    },
    subscriptionStatus,
    onStatus(listener) {
      statusListeners.add(listener);
      return () => void statusListeners.delete(listener);
    },
    view(sub, viewOptions = {}) {
      // A view with the default reducer never shares its state with one that has a reducer.
      const viewKey = sub + '\n' + (viewOptions.key ?? '') + (viewOptions.reducer ? '' : '\n');
      let entry = views.get(viewKey);
      if (entry) entry.latest(viewOptions);
      else views.set(viewKey, (entry = createView(ctx, sub, viewKey, viewOptions)));
      return entry.view;
    },
    close() {
      stop();
      unlisten?.();
      unlisten = undefined;
      storage.flush();
      setState(initialState('closed'));
    },
  };
  const ctx = { subscribe: client.subscribe, subscriptionStatus, watchers, storage };
  return client;
}
