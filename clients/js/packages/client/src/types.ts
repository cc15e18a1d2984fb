/** The public types of @nginx-sse/client (see ../../API.md). */

export type ConnectionStatus = 'idle' | 'connecting' | 'open' | 'reconnecting' | 'closed';
export type ViewStatus = 'idle' | 'connecting' | 'live' | 'reconnecting' | 'denied' | 'closed';

export interface SSEEvent<T = unknown> {
  /** The event name: the concrete channel. */
  channel: string;
  /** The data, parsed. */
  data: T;
  /** The data as received. */
  raw: string;
  /** `id:` when the location keeps history (a decimal global sequence number). */
  id?: string;
}

export interface ClientOptions {
  /** The sse_channel location, e.g. '/events'. */
  url: string;
  /**
   * The `sse_subscribe` location, e.g. '/events/subscribe'. When set and the
   * stream sends `sse-session` (`sse_session on`), demand changes are POSTed
   * there and applied to the open stream instead of reconnecting; anything
   * that fails falls back to reconnecting.
   */
  subscribeUrl?: string;
  /** Query argument carrying the subscriptions; default 'channels'. */
  channelsParam?: string;
  /** Default 'same-origin'. */
  credentials?: RequestCredentials;
  headers?: Record<string, string>;
  /** Default 50: demand changes within this window make one request. */
  debounceMs?: number;
  /**
   * Backoff: delay = random(0, min(maxMs, base * 2^attempt)), where base is
   * `initialMs` if given, else the server's `retry:`, else 1000; maxMs
   * defaults to 30000.
   */
  retry?: { initialMs?: number; maxMs?: number };
  /** Default false: end the stream while the page is hidden, resume when visible. */
  closeWhenHidden?: boolean;
  /** Called on 401 (and on a 403 that names no subscription), then backoff. */
  onAuthError?: (status: number) => void;
  /** Default false: keep the last event id (and views with persist) in sessionStorage. */
  persist?: 'session' | false;
  /** Default 'nginx-sse:' + url. Also names the tab-sharing lock and channel. */
  storageKey?: string;
  /** Default false: one tab (Web Locks) holds the connection, BroadcastChannel relays. */
  shareAcrossTabs?: boolean;
  /** Injectable fetch (tests). */
  fetch?: typeof fetch;
}

export interface SubscribeOptions<T> {
  /** Default: JSON.parse, falling back to the raw string. */
  parse?: (raw: string) => T;
  onGap?: (channel: string) => void;
  onDenied?: (subscription: string, reason: string) => void;
}

export interface ViewOptions<T, S> {
  /** Default: keep the last event's data. */
  reducer?: (state: S | undefined, event: SSEEvent<T>) => S;
  initial?: S;
  parse?: (raw: string) => T;
  /** Keep the state in sessionStorage (JSON). */
  persist?: 'session';
  /** Distinguishes views of one subscription with different reducers. */
  key?: string;
  /** Addition: called on `sse-gap` for this view's channel (latest callback given wins). */
  onGap?: (channel: string) => void;
  /** Addition: called when the subscription is denied (latest callback given wins). */
  onDenied?: (subscription: string, reason: string) => void;
}

export interface ViewState<S> {
  data: S | undefined;
  status: ViewStatus;
  /** Denial reason, or the connection's last error while reconnecting. */
  error?: string;
  lastEventId?: string;
}

export interface View<S> {
  /** The same object until something changes (useSyncExternalStore). */
  getSnapshot(): ViewState<S>;
  /** `{ data: initial, status: 'idle' }`, always the same object. */
  getServerSnapshot(): ViewState<S>;
  /** Adds demand while subscribed; the state is kept after the last one leaves. */
  subscribe(onChange: () => void): () => void;
}

export interface Client {
  /** Adds demand for a channel or pattern; returns the unsubscribe function. */
  subscribe<T = unknown>(
    subscription: string,
    listener: (e: SSEEvent<T>) => void,
    options?: SubscribeOptions<T>,
  ): () => void;
  readonly status: ConnectionStatus;
  readonly lastEventId: string | undefined;
  /** Subscriptions currently requested from the server (sorted). */
  readonly activeSubscriptions: readonly string[];
  subscriptionStatus(subscription: string): { status: ViewStatus; reason?: string };
  onStatus(listener: (s: ConnectionStatus) => void): () => void;
  /** A cached, stable store of one subscription's reduced state. */
  view<T = unknown, S = T>(subscription: string, options?: ViewOptions<T, S>): View<S>;
  close(): void;
}
