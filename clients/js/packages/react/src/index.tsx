/**
 * React bindings of the nginx-sse browser client: `SSEProvider`, `useSSE`,
 * `useSSEClient`, `withSSE`. The contract is clients/js/API.md.
 *
 * Nothing here runs on the server beyond rendering: the provider creates its
 * client in an effect (effects never run during server rendering), so the
 * context holds `null` there and every `useSSE` returns
 * `{ data: initial, status: 'idle' }`.
 */
import {
  createContext,
  useContext,
  useEffect,
  useMemo,
  useRef,
  useState,
  useSyncExternalStore,
  type ComponentType,
  type FunctionComponent,
  type ReactElement,
  type ReactNode,
} from 'react';
import { createClient } from '@nginx-sse/client';
import type { Client, ClientOptions, ViewOptions, ViewState, ViewStatus } from '@nginx-sse/client';

export type {
  Client,
  ClientOptions,
  ConnectionStatus,
  SSEEvent,
  ViewOptions,
  ViewState,
  ViewStatus,
} from '@nginx-sse/client';

const SSEContext = createContext<Client | null>(null);

/** Either an existing client (the caller owns it: it is not closed on unmount), or the options of one to create. */
export type SSEProviderProps =
  | { client: Client | null; url?: undefined; options?: undefined; children?: ReactNode }
  | { url: string; options?: Omit<ClientOptions, 'url'>; client?: undefined; children?: ReactNode };

interface Owned {
  client: Client;
  closing?: ReturnType<typeof setTimeout>;
}

/**
 * Gives its subtree a client. With `url` (+ `options`) it creates one client
 * for its whole lifetime, on the client side only (in an effect), and closes
 * it after it unmounts; `url`/`options` changes after the first mount are
 * ignored (give the provider a `key` to start over). The close is deferred by
 * a timeout that a remount cancels, so StrictMode's mount → unmount → mount
 * keeps the one client (one connection).
 */
export function SSEProvider(props: SSEProviderProps): ReactElement {
  const [created, setCreated] = useState<Client | null>(null);
  const owned = useRef<Owned | null>(null);
  const url = props.client === undefined ? props.url : undefined;
  useEffect(() => {
    if (url === undefined) return;
    const o = (owned.current ??= { client: createClient({ ...props.options, url }) });
    clearTimeout(o.closing);
    setCreated(o.client);
    return () => {
      o.closing = setTimeout(() => {
        owned.current = null;
        o.client.close();
      });
    };
    // Created once per provider lifetime (see above).
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, []);
  return <SSEContext.Provider value={props.client ?? created}>{props.children}</SSEContext.Provider>;
}

/** The provider's client; `null` without a provider, on the server and before the provider's first effect. */
export function useSSEClient(): Client | null {
  return useContext(SSEContext);
}

const noop = () => {};
const idleSubscribe = () => noop;

type Store<S> = [(onChange: () => void) => () => void, () => ViewState<S>, () => ViewState<S>];

/**
 * The reduced state of one subscription (a channel or a pattern), kept by the
 * client's cached view and read through `useSyncExternalStore`. `null` (or no
 * client) gives `{ data: options.initial, status: 'idle' }`.
 *
 * The view is keyed by the client, `subscription` and `options.key`: a new
 * options object on each render does not resubscribe, and `reducer`, `parse`,
 * `initial` and `persist` are taken when the view is first created (use `key`
 * to get a view with another reducer); the latest options are given to
 * `client.view()` again after each commit, for the client's callbacks.
 */
export function useSSE<T = unknown, S = T>(
  subscription: string | null,
  options?: ViewOptions<T, S>,
): ViewState<S> {
  const client = useContext(SSEContext);
  const key = options?.key;
  const store = useMemo((): Store<S> => {
    if (client && subscription != null) {
      const view = client.view<T, S>(subscription, options);
      return [(onChange) => view.subscribe(onChange), () => view.getSnapshot(), () => view.getServerSnapshot()];
    }
    const idle: ViewState<S> = { data: options?.initial, status: 'idle' };
    const get = () => idle;
    return [idleSubscribe, get, get];
    // Keyed by subscription + options.key only (see above).
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [client, subscription, key]);
  // The view is created once; calling `client.view()` again after each commit with new options
  // hands the client the latest callbacks (the core's `onGap`/`onDenied`: the latest given wins)
  // without resubscribing. Not during render: a render may be discarded.
  useEffect(() => {
    if (client && subscription != null && options) client.view(subscription, options);
  }, [client, subscription, options]);
  return useSyncExternalStore(store[0], store[1], store[2]);
}

/** What `withSSE` passes to `useSSE`. */
export type UseSSEArgs<T = unknown, S = T> = { subscription: string | null } & ViewOptions<T, S>;

/** The props `withSSE` injects. */
export interface SSEInjectedProps<S = unknown> {
  sseData: S | undefined;
  sseStatus: ViewStatus;
  sseError: string | undefined;
}

type InjectedKeys = keyof SSEInjectedProps;
/** The props of the component `withSSE` returns: the wrapped component's, minus the injected ones. */
export type WithoutSSEProps<P> = Omit<P, InjectedKeys>;
type DataOf<P> = P extends { sseData?: infer S } ? Exclude<S, undefined> : unknown;
/** Names the injected props that the wrapped component's props cannot take (`sseData` may be undefined). */
type Refused<P> = {
  [K in InjectedKeys & keyof P]-?: SSEInjectedProps<DataOf<P>>[K] extends P[K] ? never : K;
}[InjectedKeys & keyof P];
type Options<P, T> = [Refused<P>] extends [never]
  ? UseSSEArgs<T, DataOf<P>> | ((props: WithoutSSEProps<P>) => UseSSEArgs<T, DataOf<P>>)
  : `withSSE: the component's ${Refused<P>} prop does not accept what is injected`;

/**
 * Wraps `Component` so that it receives `sseData`, `sseStatus` and `sseError`
 * from `useSSE(subscription, options)`; `options` may be computed from the
 * outer props. Every other prop is passed through.
 */
export function withSSE<P, T = unknown>(
  Component: ComponentType<P>,
  options: Options<P, T>,
): FunctionComponent<WithoutSSEProps<P>> {
  const Wrapped: FunctionComponent<WithoutSSEProps<P>> = (props) => {
    const { subscription, ...viewOptions } = typeof options === 'function' ? options(props) : (options as UseSSEArgs<T, DataOf<P>>);
    const s = useSSE(subscription, viewOptions);
    const injected: SSEInjectedProps<DataOf<P>> = { sseData: s.data, sseStatus: s.status, sseError: s.error };
    return <Component {...(props as P)} {...injected} />;
  };
  Wrapped.displayName = `withSSE(${Component.displayName || Component.name || 'Component'})`;
  return Wrapped;
}
