/**
 * Views: a subscription's events reduced into a state, as a store for
 * useSyncExternalStore. The snapshot is the same object until the data or
 * the status changes; the state outlives its subscribers, so a component that
 * unmounts and mounts again gets it back.
 */

import type { Storage } from './storage';
import type { Client, SSEEvent, View, ViewOptions, ViewState } from './types';

export interface ViewContext {
  subscribe: Client['subscribe'];
  subscriptionStatus: Client['subscriptionStatus'];
  /** Called whenever some subscription's status may have changed. */
  watchers: Set<() => void>;
  storage: Storage;
}

export interface ViewEntry {
  view: View<any>;
  /** Takes the callbacks of the latest `client.view()` call. */
  latest(options: ViewOptions<any, any>): void;
}

const keepLast = <T, S>(_: S | undefined, e: SSEEvent<T>): S => e.data as unknown as S;

export function createView<T, S>(
  ctx: ViewContext,
  sub: string,
  viewKey: string,
  options: ViewOptions<T, S>,
): ViewEntry {
  const reducer = options.reducer ?? keepLast;
  let callbacks = options;
  const persist = options.persist === 'session';
  const onChange = new Set<() => void>();
  const server: ViewState<S> = { data: options.initial, status: 'idle' };
  let snap: ViewState<S> = server;
  let loaded = false;
  let unsubscribe: (() => void) | undefined;

  const set = (next: Partial<ViewState<S>>): void => {
    snap = { ...snap, ...next };
    if (snap.error === undefined) delete snap.error;
    onChange.forEach((f) => f());
  };

  const sync = (): void => {
    const { status, reason } = ctx.subscriptionStatus(sub);
    if (status !== snap.status || reason !== snap.error) set({ status, error: reason });
  };

  const load = (): void => {
    if (persist && !loaded) {
      loaded = true;
      const stored = ctx.storage.get().v[viewKey];
      if (stored) snap = { ...snap, data: stored.d as S, lastEventId: stored.i };
    }
  };

  const view: View<S> = {
    getSnapshot() {
      load();
      return snap;
    },
    getServerSnapshot: () => server,
    subscribe(f) {
      onChange.add(f);
      if (!unsubscribe) {
        load();
        ctx.watchers.add(sync);
        unsubscribe = ctx.subscribe<T>(
          sub,
          (e) => {
            set({ data: reducer(snap.data, e), lastEventId: e.id ?? snap.lastEventId });
            if (persist) {
              ctx.storage.get().v[viewKey] = { d: snap.data, i: snap.lastEventId };
              ctx.storage.save();
            }
          },
          {
            parse: options.parse,
            onGap: (c) => callbacks.onGap?.(c),
            onDenied: (s, r) => callbacks.onDenied?.(s, r),
          },
        );
        sync();
      }
      return () => {
        onChange.delete(f);
        if (!onChange.size && unsubscribe) {
          unsubscribe();
          unsubscribe = undefined;
          ctx.watchers.delete(sync);
          sync();
        }
      };
    },
  };
  return { view, latest: (o) => (callbacks = o) };
}
