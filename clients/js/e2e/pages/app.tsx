// The end-to-end test app: a React page whose components subscribe to
// channels through @nginx-sse/react (useSSE) or straight through the client
// (client.subscribe), render what they received, and record it in
// window.__seen[componentId] (arrays of { channel, id, data }) so that the
// tests can assert exactly. Configured by the query argument `cfg` (JSON):
//
//   { provider?: 'client' | 'url',   // 'client' (default): createClient() here and
//                                    //   <SSEProvider client>; 'url': <SSEProvider url options>
//     strict?: boolean,              // wrap everything in <React.StrictMode>
//     options?: ClientOptions,       // minus url
//     mount?: Spec[],                // components mounted at start
//     wire?: boolean,                // record every event of the streams as received
//                                    //   (window.__wire: { t, event, id }, sse-session's data left out)
//     changeDelayMs?: number }       // hold each live change (POST) this long before sending it
//   Spec = { id: string, sub: string, key?: string, kind?: 'view' | 'listener' }
//
// Controls for page.evaluate: window.__app.set(specs), mount(spec),
// unmount(id) (each resolves once React committed the change), snapshot().

import React, { StrictMode, useEffect, useLayoutEffect, useRef, useState } from 'react';
import { createRoot } from 'react-dom/client';
import { createClient } from '@nginx-sse/client';
import type { Client, ClientOptions, ConnectionStatus, SSEEvent } from '@nginx-sse/client';
import { SSEProvider, useSSE, useSSEClient } from '@nginx-sse/react';

type Spec = { id: string; sub: string; key?: string; kind?: 'view' | 'listener' };
type Rec = { channel: string; id: string | undefined; data: unknown };
type Config = {
  provider?: 'client' | 'url';
  strict?: boolean;
  options?: Omit<ClientOptions, 'url'>;
  mount?: Spec[];
  wire?: boolean;
  changeDelayMs?: number;
};
type StatusRec = { t: number; s: ConnectionStatus; lastEventId: string | undefined; active: string[] };
type ViewRec = { status: string; error?: string; lastEventId?: string; count: number; sub: string };

type WireRec = { t: number; event: string; id: string | undefined; data: string };

declare global {
  interface Window {
    __wire: WireRec[];
    __seen: Record<string, Rec[]>;
    __views: Record<string, ViewRec>;
    __app: any;
  }
}

const cfg: Config = JSON.parse(new URLSearchParams(location.search).get('cfg') || '{}');
const errors: string[] = [];
const statusLog: StatusRec[] = [];
const mountLog: { t: number; v: number; ids: string[] }[] = [];
const lifecycle: { t: number; id: string; ev: 'mount' | 'unmount' }[] = [];
window.__seen = {};
window.__views = {};
window.__wire = [];
window.addEventListener('error', (e) => errors.push(`error: ${e.message}`));
window.addEventListener('unhandledrejection', (e) => errors.push(`unhandledrejection: ${String(e.reason)}`));

let currentClient: Client | null = null;
const watched = new WeakSet<object>();
function watchClient(c: Client | null) {
  if (!c || watched.has(c)) return;
  watched.add(c);
  currentClient = c;
  const rec = (s: ConnectionStatus) =>
    statusLog.push({ t: Date.now(), s, lastEventId: c.lastEventId, active: [...c.activeSubscriptions] });
  rec(c.status);
  c.onStatus(rec);
}

// Accumulates every event the view hands over (a new array each time: the
// reducer stays pure).
function appendReducer(state: Rec[] | undefined, e: SSEEvent<unknown>): Rec[] {
  return (state ?? []).concat([{ channel: e.channel, id: e.id, data: e.data }]);
}
const EMPTY: Rec[] = [];

function short(list: Rec[]) {
  const tail = list.slice(-20);
  return tail.map((r) => {
    const d = r.data as { n?: number } | string;
    const n = d && typeof d === 'object' && 'n' in d ? d.n : JSON.stringify(d);
    return `${r.channel}#${n}@${r.id ?? '-'}`;
  }).join(' ');
}

function Lifecycle({ id }: { id: string }) {
  useEffect(() => {
    lifecycle.push({ t: Date.now(), id, ev: 'mount' });
    return () => { lifecycle.push({ t: Date.now(), id, ev: 'unmount' }); };
  }, [id]);
  return null;
}

function ViewFeed({ spec }: { spec: Spec }) {
  const v = useSSE<unknown, Rec[]>(spec.sub, { reducer: appendReducer, initial: EMPTY, key: spec.key ?? spec.id });
  const list = v.data ?? EMPTY;
  useLayoutEffect(() => {
    window.__seen[spec.id] = list;
    window.__views[spec.id] = { status: v.status, error: v.error, lastEventId: v.lastEventId, count: list.length, sub: spec.sub };
  });
  return (
    <section className="feed" data-id={spec.id} data-sub={spec.sub} data-status={v.status}
      data-error={v.error ?? ''} data-count={list.length}>
      <h3>{spec.id} <code>{spec.sub}</code>: <b className="status">{v.status}</b>
        {v.error ? <span className="error"> ({v.error})</span> : null} — {list.length} events</h3>
      <pre>{short(list)}</pre>
      <Lifecycle id={spec.id} />
    </section>
  );
}

// A component that subscribes through the framework-free core directly.
function ListenerFeed({ spec }: { spec: Spec }) {
  const client = useSSEClient();
  const [n, setN] = useState(0);
  // subscriptionStatus() is read at render: re-render often enough to show it.
  const [, setTick] = useState(0);
  useEffect(() => {
    const t = setInterval(() => setTick((x) => x + 1), 100);
    return () => clearInterval(t);
  }, []);
  useEffect(() => {
    if (!client) return;
    const list = (window.__seen[spec.id] ??= []);
    return client.subscribe(spec.sub, (e) => {
      list.push({ channel: e.channel, id: e.id, data: e.data });
      setN(list.length);
    });
  }, [client, spec.sub, spec.id]);
  const st = client ? client.subscriptionStatus(spec.sub) : { status: 'idle' as const };
  useLayoutEffect(() => {
    window.__views[spec.id] = { status: st.status, error: st.reason, count: n, sub: spec.sub };
  });
  return (
    <section className="feed listener" data-id={spec.id} data-sub={spec.sub} data-status={st.status} data-count={n}>
      <h3>{spec.id} <code>{spec.sub}</code> (listener): <b className="status">{st.status}</b> — {n} events</h3>
      <pre>{short(window.__seen[spec.id] ?? EMPTY)}</pre>
      <Lifecycle id={spec.id} />
    </section>
  );
}

function ClientSpy() {
  const c = useSSEClient();
  useEffect(() => { watchClient(c); }, [c]);
  return null;
}

function ConnectionLine() {
  const c = useSSEClient();
  const [s, setS] = useState<ConnectionStatus | 'none'>(c ? c.status : 'none');
  useEffect(() => {
    if (!c) return;
    setS(c.status);
    return c.onStatus(setS);
  }, [c]);
  return <p id="connection" data-status={s}>connection: {s}; active: {c ? c.activeSubscriptions.join(', ') : ''}</p>;
}

let setSpecsFromOutside: ((f: (v: { v: number; specs: Spec[] }) => { v: number; specs: Spec[] }) => void) | null = null;
const commitWaiters = new Map<number, () => void>();
let version = 0;

function Feeds() {
  const [state, setState] = useState<{ v: number; specs: Spec[] }>({ v: 0, specs: cfg.mount ?? [] });
  setSpecsFromOutside = setState;
  useEffect(() => {
    mountLog.push({ t: Date.now(), v: state.v, ids: state.specs.map((s) => s.id) });
    const w = commitWaiters.get(state.v);
    if (w) { commitWaiters.delete(state.v); w(); }
  }, [state]);
  return (
    <div id="feeds">
      {state.specs.map((s) => (s.kind === 'listener'
        ? <ListenerFeed key={s.id} spec={s} />
        : <ViewFeed key={s.id} spec={s} />))}
    </div>
  );
}

function change(f: (specs: Spec[]) => Spec[]): Promise<{ t: number }> {
  const v = ++version;
  return new Promise((resolve) => {
    commitWaiters.set(v, () => resolve({ t: Date.now() }));
    setSpecsFromOutside!((old) => ({ v, specs: f(old.specs) }));
  });
}

// The page's fetch, as the client uses it: with `wire`, each stream body is
// teed and its events recorded as they come off the wire; with
// `changeDelayMs`, live changes (POST) wait that long before they leave.
function pageFetch(): typeof fetch {
  return async (input, init) => {
    if (cfg.changeDelayMs && init?.method === 'POST') await new Promise((r) => setTimeout(r, cfg.changeDelayMs));
    const res = await fetch(input, init);
    if (!cfg.wire || !res.body || !(res.headers.get('content-type') || '').includes('text/event-stream')) return res;
    const [mine, theirs] = res.body.tee();
    void (async () => {
      const reader = mine.getReader();
      const dec = new TextDecoder();
      let buf = '';
      let ev: Partial<WireRec> = {};
      try {
        for (;;) {
          const { done, value } = await reader.read();
          if (done) return;
          buf += dec.decode(value, { stream: true });
          let nl;
          while ((nl = buf.indexOf('\n')) >= 0) {
            const line = buf.slice(0, nl).replace(/\r$/, '');
            buf = buf.slice(nl + 1);
            if (line === '') {
              if (ev.event !== undefined || ev.data !== undefined) {
                const event = ev.event ?? 'message';
                window.__wire.push({ t: Date.now(), event, id: ev.id, data: event === 'sse-session' ? '(token)' : ev.data ?? '' });
              }
              ev = {};
            } else if (line.startsWith('event: ')) ev.event = line.slice(7);
            else if (line.startsWith('id: ')) ev.id = line.slice(4);
            else if (line.startsWith('data: ')) ev.data = ev.data === undefined ? line.slice(6) : ev.data + '\n' + line.slice(6);
          }
        }
      } catch {
        // The client aborted the stream.
      }
    })();
    return new Response(theirs, { status: res.status, statusText: res.statusText, headers: res.headers });
  };
}

const options: Omit<ClientOptions, 'url'> = cfg.wire || cfg.changeDelayMs ? { ...cfg.options, fetch: pageFetch() } : cfg.options ?? {};
const ownClient = cfg.provider === 'url' ? null : createClient({ url: '/events', ...options });
if (ownClient) watchClient(ownClient);

function App() {
  const body = (
    <>
      <ClientSpy />
      <ConnectionLine />
      <Feeds />
    </>
  );
  return ownClient
    ? <SSEProvider client={ownClient}>{body}</SSEProvider>
    : <SSEProvider url="/events" options={options}>{body}</SSEProvider>;
}

window.__app = {
  ready: false,
  cfg,
  errors,
  statusLog,
  mountLog,
  lifecycle,
  get client() { return currentClient; },
  set: (specs: Spec[]) => change(() => specs),
  mount: (spec: Spec) => change((old) => [...old.filter((s) => s.id !== spec.id), spec]),
  unmount: (id: string) => change((old) => old.filter((s) => s.id !== id)),
  seen: (id: string) => window.__seen[id] ?? [],
  subStatus: (sub: string) => (currentClient ? currentClient.subscriptionStatus(sub) : null),
  /** Everything a test usually asserts, in one structured-clone-able object. */
  snapshot: (withSeen = true) => ({
    now: Date.now(),
    status: currentClient?.status ?? null,
    lastEventId: currentClient?.lastEventId ?? null,
    active: currentClient ? [...currentClient.activeSubscriptions] : null,
    statusLog,
    mountLog,
    lifecycle,
    views: window.__views,
    seen: withSeen ? window.__seen : undefined,
    wire: withSeen ? window.__wire : undefined,
    errors,
  }),
};

const root = createRoot(document.getElementById('root')!);
root.render(cfg.strict ? <StrictMode><App /></StrictMode> : <App />);
// Ready once the first commit happened (Feeds' first effect ran).
const readyCheck = () => {
  if (mountLog.length > 0) window.__app.ready = true;
  else setTimeout(readyCheck, 5);
};
readyCheck();
