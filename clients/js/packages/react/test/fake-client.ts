// A controllable in-memory `Client` (clients/js/API.md) for the unit tests:
// no network, views cached per subscription + key, demand reference-counted,
// events and statuses pushed by the test.
import type {
  Client,
  ConnectionStatus,
  SSEEvent,
  SubscribeOptions,
  View,
  ViewOptions,
  ViewState,
  ViewStatus,
} from '@nginx-sse/client';

type Listener = (e: SSEEvent<unknown>) => void;

export interface FakeView<S> extends View<S> {
  readonly listeners: number;
  readonly options: ViewOptions<unknown, S> | undefined;
}

export class FakeClient implements Client {
  status: ConnectionStatus = 'idle';
  lastEventId: string | undefined = undefined;
  closed = 0;
  /** client.view() calls, in order. */
  readonly viewCalls: { subscription: string; options: ViewOptions<any, any> | undefined }[] = [];
  /** client.subscribe() calls, in order. */
  readonly subscribeCalls: string[] = [];
  private readonly demand = new Map<string, Set<Listener>>();
  private readonly views = new Map<string, FakeView<any>>();
  private readonly viewStatus = new Map<string, { status: ViewStatus; reason?: string }>();
  private readonly statusListeners = new Set<(s: ConnectionStatus) => void>();
  private seq = 0;

  get activeSubscriptions(): readonly string[] {
    return [...this.demand.keys()].sort();
  }

  /** Listeners currently subscribed to `subscription` (the demand). */
  demandOf(subscription: string): number {
    return this.demand.get(subscription)?.size ?? 0;
  }

  subscribe<T = unknown>(subscription: string, listener: (e: SSEEvent<T>) => void, _options?: SubscribeOptions<T>): () => void {
    this.subscribeCalls.push(subscription);
    let set = this.demand.get(subscription);
    if (!set) this.demand.set(subscription, (set = new Set()));
    const l = listener as Listener;
    set.add(l);
    this.setViewStatus(subscription, this.status === 'open' ? 'live' : 'connecting');
    return () => {
      const s = this.demand.get(subscription);
      if (!s?.delete(l)) return;
      if (s.size === 0) this.demand.delete(subscription);
    };
  }

  subscriptionStatus(subscription: string): { status: ViewStatus; reason?: string } {
    return this.viewStatus.get(subscription) ?? { status: 'idle' };
  }

  onStatus(listener: (s: ConnectionStatus) => void): () => void {
    this.statusListeners.add(listener);
    return () => this.statusListeners.delete(listener);
  }

  view<T = unknown, S = T>(subscription: string, options?: ViewOptions<T, S>): View<S> {
    this.viewCalls.push({ subscription, options });
    const id = subscription + '\0' + (options?.key ?? '');
    const cached = this.views.get(id);
    if (cached) return cached as View<S>;
    const client = this;
    const reducer = options?.reducer ?? ((_s: S | undefined, e: SSEEvent<T>) => e.data as unknown as S);
    const onChange = new Set<() => void>();
    let snapshot: ViewState<S> = { data: options?.initial, status: 'idle' };
    const server: ViewState<S> = { data: options?.initial, status: 'idle' };
    let unsubscribe: (() => void) | null = null;
    const set = (next: Partial<ViewState<S>>) => {
      snapshot = { ...snapshot, ...next };
      for (const f of [...onChange]) f();
    };
    const view: FakeView<S> & { set: typeof set } = {
      get listeners() {
        return onChange.size;
      },
      options: options as ViewOptions<unknown, S> | undefined,
      set,
      getSnapshot: () => snapshot,
      getServerSnapshot: () => server,
      subscribe(f) {
        onChange.add(f);
        if (!unsubscribe) {
          unsubscribe = client.subscribe<T>(subscription, (e) =>
            set({ data: reducer(snapshot.data, e), lastEventId: e.id }),
          );
          set({ status: client.subscriptionStatus(subscription).status });
        }
        return () => {
          if (!onChange.delete(f) || onChange.size) return;
          unsubscribe?.();
          unsubscribe = null;
        };
      },
    };
    this.views.set(id, view);
    return view;
  }

  /** Pushes an event of `channel` to every subscription listening to it (exact names only). */
  emit(channel: string, data: unknown): void {
    const id = String(++this.seq);
    this.lastEventId = id;
    for (const l of [...(this.demand.get(channel) ?? [])]) l({ channel, data, raw: JSON.stringify(data), id });
  }

  /** Sets the status of a subscription (and of its views). */
  setViewStatus(subscription: string, status: ViewStatus, reason?: string): void {
    this.viewStatus.set(subscription, reason === undefined ? { status } : { status, reason });
    for (const [id, v] of this.views) {
      if (id.split('\0')[0] === subscription && v.getSnapshot().status !== status)
        (v as unknown as { set(n: Partial<ViewState<unknown>>): void }).set(
          reason === undefined ? { status } : { status, error: reason },
        );
    }
  }

  setStatus(status: ConnectionStatus): void {
    this.status = status;
    for (const f of [...this.statusListeners]) f(status);
  }

  close(): void {
    this.closed++;
    this.setStatus('closed');
  }
}
